"""Programs and servers the tests drive: a fake Hub, a local HTTP server, tiny model families,
kill loops and sharded runs. Run the scripts from the repository root as python -m tests.tools.NAME."""
