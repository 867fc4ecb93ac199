"""Cut streamed text at the first stop string, as OpenAI does (the stop string is not returned)."""

from __future__ import annotations


class StopStringFilter:
    """Feed text deltas in; get back the text that is safe to send.

    Text that could be the beginning of a stop string is held back until the
    next delta shows whether it is.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self._pending += text
        cut = min((i for i in (self._pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._pending, self.stopped = self._pending[:cut], "", True
            return out
        keep = len(self._pending) - self._hold
        if keep <= 0:
            return ""
        out, self._pending = self._pending[:keep], self._pending[keep:]
        return out

    def flush(self) -> str:
        """The held-back text, once the stream has ended."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out
