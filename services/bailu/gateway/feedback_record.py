"""Recording feedback events once: one Redis script call checks and records any number of events.

For each event, in one atomic step inside Redis, the record-once script
  1. reads the completion record of every response the event names (`bailu:response:<id>`) and checks
     that the caller's API key was answered it, that it has the candidate named, and, for a comparison,
     that both answer the same prompt;
  2. if the event's idempotency key was seen, answers what it recorded then; else appends the event to the
     feedback stream and remembers the key.
So one event costs one round trip, and a batch of events costs one round trip too. A record this replica
has queued but not yet written (`CompletionLog.queued`) is checked here and its verdict handed to the
script. An unknown response is asked once more after `SETTLE_S` (another replica may not have written its
log yet), as `CompletionLog.lookup_for` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from bailu.common import redis_keys
from bailu.common.errors import BailuError, Conflict, InvalidRequest, NotFound
from bailu.common.records import DATA_FIELD, CompletionRecord, ResponseRef
from bailu.common.redis_values import as_text
from bailu.gateway.completion_log import SETTLE_S, CompletionLog

# KEYS[1]: the feedback stream; then per event: its idempotency key ("" for none) and the completion record
# keys of its first and second response ("" where it names none, or where the caller checked the record).
# ARGV[1..3]: idempotency TTL, the stream's data field, the caller's API key id; then per event: feedback id,
# body hash, event data, and per response its choice index and what the caller knows of it ("": look the
# record up; "ok:<prompt hash>", "foreign" or "nochoice": checked by the caller; "none": no response).
# Answers one verdict per event: "new", "seen:<what the key recorded>", "missing:<r>" (no record),
# "foreign:<r>" (another key's), "nochoice:<r>" (no such candidate), "prompt:2" (another prompt), where r
# is 1 or 2, the response it concerns.
RECORD_ONCE = """
local ttl, field, key_id = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local verdicts = {}
for e = 0, (#KEYS - 1) / 3 - 1 do
  local k, a = 2 + 3 * e, 4 + 7 * e
  local verdict, first_hash = nil, nil
  for r = 1, 2 do
    local key, choice, known = KEYS[k + r], tonumber(ARGV[a + 1 + 2 * r]), ARGV[a + 2 + 2 * r]
    if verdict == nil and known ~= 'none' then
      local status, hash = known, ''
      if key ~= '' then
        status = 'missing'
        local raw = redis.call('GET', key)
        local ok, record = false, nil
        if raw then ok, record = pcall(cjson.decode, raw) end
        if ok and type(record) == 'table' then
          if record.key_id ~= key_id then
            status = 'foreign'
          else
            status = 'nochoice'
            for _, c in ipairs(record.choices or {}) do
              if type(c) == 'table' and c.index == choice then status = 'ok' break end
            end
            if type(record.prompt_hash) == 'string' then hash = record.prompt_hash end
          end
        end
      elseif string.sub(known, 1, 3) == 'ok:' then
        status, hash = 'ok', string.sub(known, 4)
      end
      if status ~= 'ok' then
        verdict = status .. ':' .. r
      elseif r == 1 then
        first_hash = hash
      elseif hash ~= first_hash then
        verdict = 'prompt:2'
      end
    end
  end
  if verdict == nil then
    local idem = KEYS[k]
    local seen = idem ~= '' and redis.call('GET', idem)
    if seen then
      verdict = 'seen:' .. seen
    else
      redis.call('XADD', KEYS[1], '*', field, ARGV[a + 2])
      if idem ~= '' then redis.call('SET', idem, ARGV[a] .. '|' .. ARGV[a + 1], 'EX', ttl) end
      verdict = 'new'
    end
  end
  verdicts[e + 1] = verdict
end
return verdicts
"""


@dataclass(slots=True)
class Recording:
    """One event to record: the responses it names (each with the `param` its error names), its id, body
    hash and stream data, and its idempotency key (empty: none; `conflict_param` names it in a 409)."""

    refs: tuple[tuple[ResponseRef, str], ...]
    feedback_id: str
    body_hash: str
    data: str
    idempotency: str = ""
    conflict_param: str = "feedback_id"
    settled: set[int] = field(default_factory=set)  # responses already asked once more after SETTLE_S


@dataclass(frozen=True, slots=True)
class Recorded:
    """An event in the stream: its feedback id (for a retry, the id it was first recorded under)."""

    id: str
    duplicate: bool


Outcome = Recorded | BailuError


class FeedbackRecorder:
    """Records events through the record-once script (module docstring); one script call per round."""

    def __init__(
        self, redis: Redis, completion_log: CompletionLog, *, idempotency_ttl_s: int, settle_s: float = SETTLE_S
    ) -> None:
        self.completion_log = completion_log
        self.idempotency_ttl_s = idempotency_ttl_s
        self.settle_s = settle_s
        self._script = redis.register_script(RECORD_ONCE)

    async def record(self, key_id: str, events: Sequence[Recording]) -> list[Outcome]:
        """Each event's outcome, in order: recorded (new or a retry) or the error it is refused with
        (`NotFound`, `InvalidRequest`, `Conflict`). Raises `RedisError` when Redis cannot be reached."""
        outcomes: list[Outcome | None] = [None] * len(events)
        todo = list(range(len(events)))
        while todo:
            verdicts = await self._call(key_id, [events[i] for i in todo])
            again = []
            for i, verdict in zip(todo, verdicts, strict=True):
                outcome = self._outcome(events[i], as_text(verdict))
                if outcome is None:
                    again.append(i)
                else:
                    outcomes[i] = outcome
            if again:
                await asyncio.sleep(self.settle_s)
            todo = again
        return [o for o in outcomes if o is not None]

    async def _call(self, key_id: str, events: list[Recording]) -> list[bytes]:
        keys = [redis_keys.FEEDBACK_STREAM]
        args: list[str | int] = [self.idempotency_ttl_s, DATA_FIELD, key_id]
        for event in events:
            keys.append(redis_keys.idempotency_key(key_id, event.idempotency) if event.idempotency else "")
            args += (event.feedback_id, event.body_hash, event.data)
            for r in range(2):
                if r >= len(event.refs):
                    keys.append("")
                    args += (0, "none")
                    continue
                ref = event.refs[r][0]
                queued = self.completion_log.queued(ref.response_id)
                keys.append(redis_keys.response_key(ref.response_id) if queued is None else "")
                args += (ref.choice_index, "" if queued is None else _verdict_of(queued, ref, key_id))
        verdicts: list[bytes] = await self._script(keys=keys, args=args)
        return verdicts

    def _outcome(self, event: Recording, verdict: str) -> Outcome | None:
        """What a verdict means for `event`; None: ask again after `settle_s`."""
        code, _, detail = verdict.partition(":")
        if code == "new":
            return Recorded(event.feedback_id, duplicate=False)
        if code == "seen":
            earlier_id, _, earlier_hash = detail.partition("|")
            if earlier_hash != event.body_hash:
                message = "this idempotency key was already used with a different body"
                return Conflict(message, param=event.conflict_param)
            return Recorded(earlier_id, duplicate=True)
        r = int(detail) - 1
        ref, param = event.refs[r]
        if code == "missing" and r not in event.settled:
            event.settled.add(r)
            return None
        if code in ("missing", "foreign"):
            return NotFound(f"no response '{ref.response_id}' that this API key can give feedback on", param=param)
        if code == "nochoice":
            return InvalidRequest(f"response '{ref.response_id}' has no candidate {ref.choice_index}", param=param)
        if code == "prompt":
            return InvalidRequest("chosen and rejected must answer the same prompt", param=param)
        raise ValueError(f"unexpected verdict of the record-once script: {verdict!r}")


def _verdict_of(record: CompletionRecord, ref: ResponseRef, key_id: str) -> str:
    """What the script is told of a response whose record is queued here (see RECORD_ONCE)."""
    if record.key_id != key_id:
        return "foreign"
    if record.choice(ref.choice_index) is None:
        return "nochoice"
    return f"ok:{record.prompt_hash}"
