"""token_loss: an `evaluate` metric that turns summed next-token losses into loss, perplexity and bits.

    metric = evaluate.load(str(Path(hfgpt.__file__).parent / "token_loss"))
    metric.add_batch(nll=[812.3, 790.1], tokens=[256, 256], units=[256, 256])
    metric.compute(unit="char")   # {"loss", "perplexity", "bits_per_token", "bits_per_char", "tokens", "units"}

Each added row is one window of text: `nll` is the sum of its tokens' negative log-likelihoods
(natural log), `tokens` how many tokens were scored, `units` how many characters (or UTF-8
bytes) those tokens spell. Summing before dividing weighs every token equally, whatever the
windows' lengths. It ships inside hfgpt because the Hub-hosted metrics cannot be downloaded
offline; `python -m hfgpt.eval` loads it from this folder.
"""

import math

import datasets
import evaluate

_DESCRIPTION = "Mean next-token cross-entropy, perplexity and bits per token / character / byte from summed losses."
_KWARGS_DESCRIPTION = """
Args:
    nll: per window, the sum of the scored tokens' negative log-likelihoods in nats.
    tokens: per window, the number of tokens scored.
    units: per window, the number of characters (unit="char") or UTF-8 bytes (unit="byte") they spell.
    unit: "char" or "byte": names the bits_per_<unit> result.
Returns:
    loss: mean negative log-likelihood per token (nats); perplexity: exp(loss);
    bits_per_token: loss / ln 2; bits_per_<unit>: total nats / ln 2 / units; tokens, units: the totals.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TokenLoss(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "nll": datasets.Value("float64"),
                "tokens": datasets.Value("int64"),
                "units": datasets.Value("int64"),
            }),
        )

    def _compute(self, nll, tokens, units, unit="char"):
        if unit not in ("char", "byte"):
            raise ValueError(f"unit={unit!r}: use 'char' or 'byte'")
        total, n_tokens, n_units = math.fsum(nll), int(sum(tokens)), int(sum(units))
        if n_tokens == 0:
            raise ValueError("no tokens were scored")
        loss = total / n_tokens
        return {
            "loss": loss,
            "perplexity": math.exp(loss),
            "bits_per_token": loss / math.log(2),
            f"bits_per_{unit}": total / math.log(2) / n_units if n_units else float("nan"),
            "tokens": n_tokens,
            "units": n_units,
        }
