"""Each stream's share of the tokens packed into the batches — what the mixture realised —
per log window for the metrics and over the invocation for summary.json, beside the target
when the mixture's weights are token shares (data.mixture_unit='tokens')."""
from mmpretrain.batch import STREAMS


class StreamShares:
  """Reads the summed `stream_tokens_<stream>` counts out of each window's metrics."""

  def __init__(self, config):
    weights = {s: w for s, w in config.data.mixture.items() if w > 0}
    self.streams = sorted(weights)
    in_tokens = config.data.get("mixture_unit", "documents") == "tokens"
    self.targets = ({s: w / sum(weights.values()) for s, w in weights.items()}
                    if in_tokens else None)       # weights in documents set no token target
    self.totals = dict.fromkeys(self.streams, 0)

  def read(self, metrics: dict) -> dict:
    """Takes the window's counts out of `metrics` (every stream's); returns the counts and
    token shares of the mixture's streams, and adds them to the invocation's totals."""
    counts = {s: metrics.pop(f"stream_tokens_{s}", 0) for s in STREAMS}
    window = max(sum(counts[s] for s in self.streams), 1)
    out = {}
    for s in self.streams:
      self.totals[s] += counts[s]
      out[f"stream_tokens_{s}"] = counts[s]
      out[f"stream_token_share_{s}"] = counts[s] / window
    return out

  def summary(self) -> dict:
    """Tokens packed per stream since this invocation started, their shares, the targets."""
    total = max(sum(self.totals.values()), 1)
    return {"tokens": dict(self.totals),
            "share": {s: n / total for s, n in self.totals.items()}, "target": self.targets}
