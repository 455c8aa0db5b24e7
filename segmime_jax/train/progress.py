"""How a run reports while it trains: progress bars on a terminal, one plain line per epoch otherwise.

A bar redraws itself many times a second, which a terminal shows as one moving line and a log file keeps as
thousands; so bars are drawn only when standard error is a terminal, and otherwise each epoch ends with one
line (``epoch 3/20  loss 0.4123  val DSC 71.2% (best 71.2% at 3)  lr 2.0e-03  7.4 s``). Messages (compiling,
resuming) go through ``log`` in both cases, above the bars, and also when progress reporting is off.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO


def _print(text: str) -> None:
    print(text, flush=True)


class Reporter:
    """The voice of one run.

    Args:
      enabled: False: no bars and no per-epoch lines (messages are still said: pass ``log`` to silence them).
      label: e.g. ``"enet/dsc"``, prefixed to plain lines and shown on the bars.
      log: where messages and plain lines go (default: ``print`` to standard output, flushed).
      stream: the stream bars are drawn on (default: standard error); bars only when it is a terminal.
      quiet: say nothing at all (the processes other than process 0 of a multi-process run).
      bars: ``False``: never draw bars (a run whose bars another reporter draws, e.g. one of stacked runs).
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        label: str = "",
        log: Callable[[str], None] | None = None,
        stream: TextIO | None = None,
        quiet: bool = False,
        bars: bool = True,
    ):
        self.enabled = enabled and not quiet
        self.quiet = quiet
        self.label = label
        self._log = log or _print
        self.stream = sys.stderr if stream is None else stream
        self.bars = bars and enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self._epoch_bar: Any = None

    def follow(self, other: Reporter) -> None:
        """Draw no bars and say everything through ``other`` (a run of a stack whose bars ``other`` draws)."""
        self.bars = False
        self._log = other.message

    def message(self, text: str) -> None:
        """Say ``text`` (above the bars when they are drawn)."""
        if self.quiet:
            return
        if self._epoch_bar is not None:
            from tqdm.auto import tqdm

            tqdm.write(text, file=sys.stdout)
        else:
            self._log(text)

    def epochs(self, first: int, last: int) -> Iterator[int]:
        """Iterate over epochs ``first..last``, with a bar of all ``last`` epochs when bars are drawn."""
        if not self.bars:
            yield from range(first, last + 1)
            return
        from tqdm.auto import tqdm

        self._epoch_bar = tqdm(
            range(first, last + 1),
            initial=first - 1,
            total=last,
            desc=self.label,
            unit="epoch",
            dynamic_ncols=True,
            file=self.stream,
        )
        try:
            yield from self._epoch_bar
        finally:
            self._epoch_bar.close()
            self._epoch_bar = None

    def steps(self, batches: Iterable[Any], *, total: int, epoch: int) -> Iterable[Any]:
        """``batches``, with a transient bar of the epoch's steps when bars are drawn."""
        if not self.bars:
            return batches
        from tqdm.auto import tqdm

        return tqdm(batches, total=total, leave=False, desc=f"epoch {epoch}", dynamic_ncols=True, file=self.stream)

    def epoch_done(self, record: dict[str, Any], *, last: int, best_metric: float, best_epoch: int) -> None:
        """Show the end of an epoch: the bar's postfix, or one plain line."""
        if not self.enabled:
            return
        lr = record["learning_rate"]
        if self._epoch_bar is not None:
            self._epoch_bar.set_postfix(
                loss=f"{record['train_loss']:.4f}", val_dsc=f"{record['val_dsc_fg']:.4f}", lr=f"{lr:.2e}", refresh=False
            )
            return
        self._log(
            f"{self.label}  epoch {record['epoch']}/{last}  loss {record['train_loss']:.4f}  "
            f"val DSC {100 * record['val_dsc_fg']:.1f}% (best {100 * best_metric:.1f}% at {best_epoch})  "
            f"lr {lr:.1e}  {record['time_s']:.1f} s"
        )
