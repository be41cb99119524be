"""The Redis backend: shared state for pump processes on any number of hosts.

Every read-modify-write is one Lua script, so each operation is atomic however many processes
share the data, and each hop is one round trip. Key layout, all under the ``prefix``::

    {prefix}t:{thread}   hash   p=parent id, l=listener, c=conversation (the root: l only)
    {prefix}c:{conv}     set    the thread ids of a conversation
    {prefix}h:{conv}     list   the conversation's history, oldest first
    {prefix}live         zset   live thread id -> expiry in ms (the root: +inf); count() reads it
    {prefix}x:{thread}   string receipt of a prune, kept briefly so a retried prune gets the
                                answer of the attempt that already ran instead of "unknown"
    {prefix}a:{conv}     string tombstone of an abandoned conversation: its opening extend, if
                                it arrives late, creates nothing (see `Backend.abandon`)
    {prefix}dlq          stream the dead letters, oldest first: c=conversation, r=reason,
                                m=message, l=listener, h=chain (names joined by spaces, which
                                listener names never hold), a=attempts, e=envelope
    {prefix}dlq:dropped  string how many dead letters were trimmed beyond max_entries
    {prefix}procs        zset   organism process -> when its run snapshot is forgotten (ms)
    {prefix}r:{process}  hash   s=the process's run snapshot, t=when it was written (ms)
    {prefix}q:{process}  list   commands other processes queued for it (cancel a run)

The dead-letter stream has no TTL: it lives as long as Redis keeps its data (run Redis with
AOF, ``appendonly yes``, to keep it across a restart of the server). It is trimmed exactly
(``XADD MAXLEN = n``, not ``~``): ``max_entries`` is then the bound every backend keeps and
the drop count is exact, and dead letters are appended only on failures, so the few
microseconds exact trimming costs over approximate trimming are never on the hop path.

TTLs are sliding and set by the scripts (PEXPIRE), from the server's clock: touching a record
refreshes it and its conversation's set and history. A record whose key expired is unknown;
`live` forgets it lazily (every expired entry when a conversation opens, and on ``count()``).
No command lists keys: nothing here needs to enumerate them.

Connections come from a blocking pool (callers wait for a free connection instead of failing),
and a connection or timeout error is retried with capped exponential backoff with jitter, so
operations succeed again once a restarted server answers. When an operation still fails, its
`BackendError` says which of these it was, because each calls for something else: nothing
listens there (start the server, fix the URL), the host name is unknown, the server took the
connection but did not answer in time (stalled or overloaded: look at its load and slowlog, or
raise ``socket_timeout``), it is busy in another client's script (BUSY), it dropped the
connection, or it refused the credentials.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import os
import socket
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from xml_pipeline._errors import BackendError, Reason
from xml_pipeline.backends._redis_batch import BatcherClosedError, ScriptBatcher
from xml_pipeline.backends.base import (
    TOMBSTONE_SECONDS,
    DeadLetter,
    DeadLetterCounts,
    PruneResult,
    RunSnapshot,
    ThreadRecord,
)
from xml_pipeline.backends.rules import (
    DEFAULTS,
    check_settings,
    id_in_use,
    letter_id_key,
    letter_matches,
    since_ms,
)

__all__ = ["RedisBackend"]

# No command blocks server-side, so a reply slower than this means a dead or stuck link.
# Both can be changed in the URL (?socket_timeout=10&socket_connect_timeout=5).
_SOCKET_TIMEOUT = 5.0
_CONNECT_TIMEOUT = 2.0
_RETRIES = 3
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 1.0
# Dead letters read per XRANGE while listing them; decode_responses is off, so an XRANGE
# reply is a list of (id, fields) in bytes.
_LETTER_PAGE = 500
_Entries = list[tuple[bytes, dict[bytes, bytes]]]
# How long to wait for a free pooled connection before reporting the backend overloaded.
_POOL_TIMEOUT = 30.0
# Pipelines in the air at once; callers beyond that share the next pipeline (see _redis_batch).
_PIPELINES_IN_FLIGHT = 4

# Every script starts with this prelude. The backend's settings are constants in the source
# (each backend registers its own copies), so a call carries only thread ids and entries.
_LUA_COMMON = """
-- A number handed to redis.call is formatted as a float ('%.14g') and parsed back by the server,
-- a few percent of a script's time: arguments are strings, times formatted once as integers.
local P, TTL, TTL_MS, MAX = {prefix}, '{ttl_ms}', {ttl_ms}, {max_entries}
local TRIM, RECEIPT, TOMB = '-{max_entries}', '{receipt_ms}', '{tomb_ms}'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function expiry(now)
  return string.format('%d', now + TTL_MS)
end
local function touch_history(conv, entry)
  local hk = P .. 'h:' .. conv
  if entry and redis.call('RPUSH', hk, entry) > MAX then
    redis.call('LTRIM', hk, TRIM, -1)
  end
  redis.call('PEXPIRE', hk, TTL)
end
local function retire(conv)
  local ck = P .. 'c:' .. conv
  local ids = redis.call('SMEMBERS', ck)
  local removed = 0
  for i = 1, #ids, 1000 do
    local last = math.min(i + 999, #ids)
    local keys = {{}}
    for j = i, last do keys[#keys + 1] = P .. 't:' .. ids[j] end
    removed = removed + redis.call('DEL', unpack(keys))
    redis.call('ZREM', P .. 'live', unpack(ids, i, last))
  end
  redis.call('DEL', ck, P .. 'h:' .. conv)
  return removed
end
"""

# ARGV: parent, child, listener[, entry]
# -> conversation | nil (parent unknown) | {{conversation, listener}} (already there) | 0 (in use)
_EXTEND = """
local pk, tk = P .. 't:' .. ARGV[1], P .. 't:' .. ARGV[2]
local par = redis.call('HMGET', pk, 'l', 'c')
if not par[1] then return false end
local cur = redis.call('HMGET', tk, 'p', 'l', 'c')
if cur[2] then
  if cur[1] == ARGV[1] then return {{cur[3], cur[2]}} end
  return 0
end
local now = now_ms()
local until_ms = expiry(now)
local live = P .. 'live'
local conv = par[2]
if conv then
  redis.call('PEXPIRE', pk, TTL)
  redis.call('ZADD', live, until_ms, ARGV[1], until_ms, ARGV[2])
else
  if redis.call('EXISTS', P .. 'a:' .. ARGV[2]) == 1 then return false end
  conv = ARGV[2]
  redis.call('ZADD', live, until_ms, ARGV[2])
  -- Expired entries come from abandoned conversations: each new conversation clears them.
  redis.call('ZREMRANGEBYSCORE', live, '-inf', string.format('(%d', now))
end
redis.call('HSET', tk, 'p', ARGV[1], 'l', ARGV[3], 'c', conv)
redis.call('PEXPIRE', tk, TTL)
local ck = P .. 'c:' .. conv
redis.call('SADD', ck, ARGV[2])
redis.call('PEXPIRE', ck, TTL)
touch_history(conv, ARGV[4])
return conv
"""

# ARGV: thread, token[, entry] -> "caller NUL caller_thread NUL conversation NUL ended" | nil
# A retried call (same token) whose first attempt already ran gets that attempt's answer.
_PRUNE = """
local tk, xk = P .. 't:' .. ARGV[1], P .. 'x:' .. ARGV[1]
local rec = redis.call('HMGET', tk, 'p', 'c')
if not rec[1] then
  local receipt = redis.call('GET', xk)
  if receipt then
    local sep = string.find(receipt, '\\0', 1, true)
    if string.sub(receipt, 1, sep - 1) == ARGV[2] then return string.sub(receipt, sep + 1) end
  end
  return false
end
local parent, conv = rec[1], rec[2]
local pk = P .. 't:' .. parent
local par = redis.call('HMGET', pk, 'l', 'c')
local live = P .. 'live'
redis.call('DEL', tk)
redis.call('ZREM', live, ARGV[1])
local ended = '0'
if par[1] and not par[2] then
  retire(conv)
  ended = '1'
else
  local ck = P .. 'c:' .. conv
  redis.call('SREM', ck, ARGV[1])
  if not par[1] then return false end
  redis.call('PEXPIRE', pk, TTL)
  redis.call('ZADD', live, expiry(now_ms()), parent)
  redis.call('PEXPIRE', ck, TTL)
  touch_history(conv, ARGV[3])
end
local reply = par[1] .. '\\0' .. parent .. '\\0' .. conv .. '\\0' .. ended
redis.call('SET', xk, ARGV[2] .. '\\0' .. reply, 'PX', RECEIPT)
return reply
"""

# ARGV: thread -> {{listener}} (the root) | {{parent, listener, conversation}} | nil
_GET = """
local tk = P .. 't:' .. ARGV[1]
local rec = redis.call('HMGET', tk, 'p', 'l', 'c')
if not rec[2] then return false end
if not rec[3] then return {{rec[2]}} end
redis.call('PEXPIRE', tk, TTL)
redis.call('ZADD', P .. 'live', expiry(now_ms()), ARGV[1])
redis.call('PEXPIRE', P .. 'c:' .. rec[3], TTL)
redis.call('PEXPIRE', P .. 'h:' .. rec[3], TTL)
return rec
"""

# ARGV: thread -> listener names from the thread up to the root | nil
_CHAIN = """
local names = {{}}
local id = ARGV[1]
for _ = 1, 100000 do
  local rec = redis.call('HMGET', P .. 't:' .. id, 'p', 'l')
  if not rec[2] then return false end
  names[#names + 1] = rec[2]
  if not rec[1] then return names end
  id = rec[1]
end
return redis.error_reply('chain deeper than 100000 records from ' .. ARGV[1])
"""

# ARGV: conversation -> records removed
_RETIRE = """
return retire(ARGV[1])
"""

# ARGV: conversation -> records removed; a late opening extend of it then creates nothing
_ABANDON = """
redis.call('SET', P .. 'a:' .. ARGV[1], '1', 'PX', TOMB)
return retire(ARGV[1])
"""

# -> live records
_COUNT = """
local live = P .. 'live'
redis.call('ZREMRANGEBYSCORE', live, '-inf', string.format('(%d', now_ms()))
return redis.call('ZCARD', live)
"""

# ARGV: root, name
_PUT_ROOT = """
if redis.call('HSETNX', P .. 't:' .. ARGV[1], 'l', ARGV[2]) == 1 then
  redis.call('ZADD', P .. 'live', '+inf', ARGV[1])
end
return 1
"""

# ARGV: max entries, then per letter: conversation, reason, message, listener, chain,
# attempts, envelope -> the ids, in order. Trimmed exactly, and the entries trimmed counted, in
# the same step.
_ADD_DEAD_LETTERS = """
local key = P .. 'dlq'
local before = redis.call('XLEN', key)
local ids = {{}}
for i = 2, #ARGV, 7 do
  ids[#ids + 1] = redis.call('XADD', key, 'MAXLEN', ARGV[1], '*', 'c', ARGV[i],
    'r', ARGV[i + 1], 'm', ARGV[i + 2], 'l', ARGV[i + 3], 'h', ARGV[i + 4],
    'a', ARGV[i + 5], 'e', ARGV[i + 6])
end
local dropped = before + #ids - redis.call('XLEN', key)
if dropped > 0 then redis.call('INCRBY', P .. 'dlq:dropped', dropped) end
return ids
"""

# -> {{entries kept, entries dropped}}
_DEAD_LETTER_COUNTS = """
local dropped = redis.call('GET', P .. 'dlq:dropped') or '0'
return {{redis.call('XLEN', P .. 'dlq'), tonumber(dropped)}}
"""

# The run registry. Times are the server's, so ages never depend on the processes' clocks.
# ARGV: process, snapshot, forget_ms -> the commands queued for the process
_PUT_RUNS = """
local now = now_ms()
local procs = P .. 'procs'
redis.call('ZREMRANGEBYSCORE', procs, '-inf', string.format('(%d', now))
local rk, qk = P .. 'r:' .. ARGV[1], P .. 'q:' .. ARGV[1]
redis.call('HSET', rk, 's', ARGV[2], 't', string.format('%d', now))
redis.call('PEXPIRE', rk, ARGV[3])
redis.call('ZADD', procs, string.format('%d', now + tonumber(ARGV[3])), ARGV[1])
local commands = redis.call('LRANGE', qk, 0, -1)
if #commands > 0 then redis.call('DEL', qk) end
return commands
"""

# -> {{now_ms, process, written_ms, snapshot, process, written_ms, snapshot, ...}}
_RUN_SNAPSHOTS = """
local now = now_ms()
local procs = P .. 'procs'
redis.call('ZREMRANGEBYSCORE', procs, '-inf', string.format('(%d', now))
local found = {{string.format('%d', now)}}
for _, process in ipairs(redis.call('ZRANGE', procs, 0, -1)) do
  local rec = redis.call('HMGET', P .. 'r:' .. process, 't', 's')
  if rec[1] then
    found[#found + 1] = process
    found[#found + 1] = rec[1]
    found[#found + 1] = rec[2]
  end
end
return found
"""

# ARGV: process, command -> 1 queued | 0 no such process
_PUSH_RUN_COMMAND = """
local rk, qk = P .. 'r:' .. ARGV[1], P .. 'q:' .. ARGV[1]
local ttl = redis.call('PTTL', rk)
if ttl <= 0 then return 0 end
if redis.call('RPUSH', qk, ARGV[2]) > 1000 then redis.call('LTRIM', qk, 0, 999) end
redis.call('PEXPIRE', qk, ttl)
return 1
"""

# ARGV: process
_DELETE_RUNS = """
redis.call('DEL', P .. 'r:' .. ARGV[1], P .. 'q:' .. ARGV[1])
redis.call('ZREM', P .. 'procs', ARGV[1])
return 1
"""

_SCRIPTS = {
    "put_runs": _PUT_RUNS,
    "run_snapshots": _RUN_SNAPSHOTS,
    "push_run_command": _PUSH_RUN_COMMAND,
    "delete_runs": _DELETE_RUNS,
    "add_dead_letters": _ADD_DEAD_LETTERS,
    "dead_letter_counts": _DEAD_LETTER_COUNTS,
    "extend": _EXTEND,
    "prune": _PRUNE,
    "get": _GET,
    "chain": _CHAIN,
    "retire_conversation": _RETIRE,
    "abandon": _ABANDON,
    "count": _COUNT,
    "put_root": _PUT_ROOT,
}


def _lua_string(text: str) -> str:
    """A Lua string literal for any text: every byte as a three-digit decimal escape."""
    return '"' + "".join(f"\\{byte:03d}" for byte in text.encode()) + '"'


def _redact(url: str) -> str:
    """The URL without its password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _os_cause(exc: BaseException) -> OSError | None:
    """The operating system's error behind a redis-py error, if there is one."""
    inner = exc.__cause__ or exc.__context__
    while inner is not None and not isinstance(inner, OSError):
        inner = inner.__cause__ or inner.__context__
    return inner


def _describe(exc: BaseException) -> str:
    """The error and, when its text does not say it, the system's word for the root cause."""
    text = f"{type(exc).__name__}: {str(exc).rstrip('.')}"
    inner = _os_cause(exc)
    if inner is not None and inner.errno:
        # asyncio puts its own text in strerror; a resolver error has no other words
        gai = isinstance(inner, socket.gaierror)
        reason = inner.strerror if gai and inner.strerror else os.strerror(inner.errno)
        if reason.lower() not in text.lower():
            text = f"{text} ({reason})"
    return text


def _letter(raw_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    """A dead letter from a stream entry (see the key layout)."""

    def text(key: bytes) -> str:
        return fields.get(key, b"").decode("utf-8", "replace")

    letter_id = raw_id.decode()
    chain = text(b"h")
    return DeadLetter(
        conversation=text(b"c"),
        reason=text(b"r"),
        message=text(b"m"),
        listener=text(b"l"),
        id=letter_id,
        time=letter_id_key(letter_id)[0] / 1000,
        envelope=fields.get(b"e", b""),
        chain=tuple(chain.split(" ")) if chain else (),
        attempts=int(fields.get(b"a", b"1")),
    )


def _seconds(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) else default


class RedisBackend:
    """Shared state in Redis, for pump processes on one or several hosts.

    Each operation is one Lua script call (atomic); calls made concurrently share round trips
    and script runs (automatic pipelining). Organisms sharing one Redis stay apart by
    ``prefix``. Connections come from a blocking pool of at most ``max_connections``;
    connection errors and timeouts are retried with capped exponential backoff and jitter
    before an operation gives up with `BackendError`. Needs Redis >= 6.2; not for Redis
    Cluster (scripts derive key names).

    Raises:
        ValueError: ``thread_ttl_seconds`` is not positive, ``history_max_entries`` < 1, or
            ``max_connections`` < 1.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULTS.redis_prefix,
        thread_ttl_seconds: float = DEFAULTS.thread_ttl_seconds,
        history_max_entries: int = DEFAULTS.history_max_entries,
        max_connections: int = DEFAULTS.redis_max_connections,
    ) -> None:
        check_settings(
            "RedisBackend()",
            thread_ttl_seconds=thread_ttl_seconds,
            history_max_entries=history_max_entries,
            redis_max_connections=max_connections,
            redis_prefix=prefix,
        )
        self._url = _redact(url)
        self._prefix = prefix
        self._letters_key = prefix + "dlq"
        self._history_prefix = prefix + "h:"
        # Receipt tokens only need to be unique among this client's in-flight prunes.
        self._token_prefix = os.urandom(6).hex() + ":"
        self._tokens = itertools.count()
        # Options in the URL's query (?socket_timeout=10) win over these keyword arguments.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=_POOL_TIMEOUT,
            socket_timeout=_SOCKET_TIMEOUT,
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_keepalive=True,
            retry=Retry(
                ExponentialWithJitterBackoff(cap=_BACKOFF_CAP, base=_BACKOFF_BASE), _RETRIES
            ),
        )
        self._client = aioredis.Redis.from_pool(pool)
        self._socket_timeout = _seconds(pool.connection_kwargs.get("socket_timeout"), 0.0)
        self._connect_timeout = _seconds(
            pool.connection_kwargs.get("socket_connect_timeout"), self._socket_timeout
        )
        self._pool_timeout = _seconds(pool.timeout, _POOL_TIMEOUT)
        self._max_connections = pool.max_connections
        # A receipt must outlive every retry of the prune that wrote it.
        attempt = max(self._socket_timeout, _SOCKET_TIMEOUT) + _BACKOFF_CAP
        receipt_ms = int((attempt * (_RETRIES + 1) + 1.0) * 1000)
        prelude = _LUA_COMMON.format(
            prefix=_lua_string(prefix),
            ttl_ms=max(1, round(thread_ttl_seconds * 1000)),
            max_entries=history_max_entries,
            receipt_ms=receipt_ms,
            tomb_ms=int(max(TOMBSTONE_SECONDS * 1000, receipt_ms)),
        )
        self._scripts: dict[str, AsyncScript] = {
            name: self._client.register_script(prelude + body.format())
            for name, body in _SCRIPTS.items()
        }
        self._extend = self._scripts["extend"]
        self._prune = self._scripts["prune"]
        self._batcher = ScriptBatcher(
            self._client,
            list(self._scripts.values()),
            max_in_flight=min(_PIPELINES_IN_FLIGHT, max_connections),
        )
        self._call = self._batcher.call

    def __repr__(self) -> str:
        return f"RedisBackend({self._url!r}, prefix={self._prefix!r})"

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Check that Redis answers, and load the scripts.

        Raises:
            BackendError: Redis is unreachable (reason ``backend_unreachable``); the message
                names the URL and the cause.
        """
        try:
            await self._client.ping()
            await self._batcher.load()
        except RedisError as exc:
            raise self._error("open", exc) from exc

    async def aclose(self) -> None:
        """Close every pooled connection; the data stays in Redis.

        Calls still waiting for Redis fail at once with `BackendError` (reason
        ``backend_error``); whether those already sent ran is unknown.
        """
        await self._batcher.aclose()
        await self._client.aclose()

    # -- the protocol -------------------------------------------------------------------------

    async def put_root(self, thread_id: str, name: str) -> None:
        """Create (or keep, if present) the root record; the root has no TTL.

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        await self._run("put_root", thread_id, name)

    async def extend(
        self, parent_id: str, child_id: str, listener: str, history_entry: bytes | None = None
    ) -> ThreadRecord | None:
        """Create ``child_id`` under ``parent_id`` (see `Backend.extend`).

        Raises:
            ValueError: ``child_id`` is already in use under another parent.
            BackendError: Redis is unreachable or failed.
        """
        args = (
            (parent_id, child_id, listener)
            if history_entry is None
            else (parent_id, child_id, listener, history_entry)
        )
        try:
            reply = await self._call(self._extend, (), args)
        except RedisError as exc:
            raise self._error("extend", exc) from exc
        if reply is None:
            return None
        if reply.__class__ is bytes:
            return ThreadRecord(child_id, parent_id, listener, reply.decode())
        if isinstance(reply, list):  # a retried call that already succeeded
            return ThreadRecord(child_id, parent_id, reply[1].decode(), reply[0].decode())
        raise id_in_use(child_id)

    async def prune(self, thread_id: str, history_entry: bytes | None = None) -> PruneResult | None:
        """Retire ``thread_id`` and tell where its response goes (see `Backend.prune`).

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        token = f"{self._token_prefix}{next(self._tokens)}"
        args = (thread_id, token) if history_entry is None else (thread_id, token, history_entry)
        try:
            reply = await self._call(self._prune, (), args)
        except RedisError as exc:
            raise self._error("prune", exc) from exc
        if reply is None:
            return None
        caller, caller_thread, conversation, ended = reply.decode().split("\0")
        return PruneResult(caller, caller_thread, conversation, ended == "1")

    async def get(self, thread_id: str) -> ThreadRecord | None:
        """The record of ``thread_id`` (refreshing its TTL), or ``None``.

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        reply = await self._run("get", thread_id)
        if reply is None:
            return None
        if len(reply) == 1:
            return ThreadRecord(thread_id, None, reply[0].decode(), None)
        parent, listener, conversation = reply
        return ThreadRecord(thread_id, parent.decode(), listener.decode(), conversation.decode())

    async def chain(self, thread_id: str) -> list[str] | None:
        """Listener names from the root down to ``thread_id``, or ``None`` when unknown.

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        reply = await self._run("chain", thread_id)
        if reply is None:
            return None
        return [name.decode() for name in reversed(reply)]

    async def retire_conversation(self, conversation: str) -> int:
        """Remove every record and the history of a conversation; returns records removed.

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        removed: int = await self._run("retire_conversation", conversation)
        return removed

    async def abandon(self, conversation: str) -> int:
        """Retire a conversation whose opening call may still arrive (see `Backend.abandon`).

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        removed: int = await self._run("abandon", conversation)
        return removed

    async def count(self) -> int:
        """Number of live thread records under this prefix, the root included.

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        live: int = await self._run("count")
        return live

    async def history(self, conversation: str) -> list[bytes]:
        """The conversation's history, oldest first (empty when none).

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        try:
            entries = await self._client.lrange(self._history_prefix + conversation, 0, -1)
        except RedisError as exc:
            raise self._error("history", exc) from exc
        # decode_responses is off: every entry comes back as bytes.
        return cast("list[bytes]", entries)

    # -- dead letters -------------------------------------------------------------------------

    async def add_dead_letters(
        self, letters: Sequence[DeadLetter], max_entries: int
    ) -> list[DeadLetter]:
        """Append ``letters`` to the stream in one script call (see
        `Backend.add_dead_letters`).

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        if not letters:
            return []
        args: list[str | bytes] = [str(max_entries)]
        for letter in letters:
            args += (
                letter.conversation,
                letter.reason,
                letter.message,
                letter.listener,
                " ".join(letter.chain),
                str(letter.attempts),
                letter.envelope,
            )
        raw_ids = await self._run("add_dead_letters", *args)
        kept = []
        for letter, raw_id in zip(letters, raw_ids, strict=True):
            letter_id = raw_id.decode()
            kept.append(
                dataclasses.replace(letter, id=letter_id, time=letter_id_key(letter_id)[0] / 1000)
            )
        return kept

    async def dead_letters(
        self,
        *,
        reason: str | None = None,
        listener: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """The kept dead letters, oldest first, filtered (see `Backend.dead_letters`); read
        a page at a time with XRANGE and filtered here (a stream has no index to ask).

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        start = f"{since_ms(since)}-0" if since is not None else "-"
        found: list[DeadLetter] = []
        while limit is None or len(found) < limit:
            try:
                page = cast(
                    "_Entries",
                    await self._client.xrange(
                        self._letters_key, min=start, max="+", count=_LETTER_PAGE
                    ),
                )
            except RedisError as exc:
                raise self._error("dead_letters", exc) from exc
            for raw_id, fields in page:
                letter = _letter(raw_id, fields)
                if letter_matches(letter, reason, listener):
                    found.append(letter)
                    if limit is not None and len(found) >= limit:
                        break
            if len(page) < _LETTER_PAGE:
                break
            start = "(" + page[-1][0].decode()
        return found

    async def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        """The dead letter with this id, or ``None``.

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        if letter_id_key(letter_id)[0] < 0:
            return None  # not an id: XRANGE would refuse it
        try:
            page = cast(
                "_Entries",
                await self._client.xrange(self._letters_key, min=letter_id, max=letter_id, count=1),
            )
        except RedisError as exc:
            raise self._error("get_dead_letter", exc) from exc
        return _letter(*page[0]) if page else None

    async def delete_dead_letters(self, letter_ids: Sequence[str]) -> int:
        """Remove the dead letters with these ids (XDEL); returns how many were removed.

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        valid = [i for i in letter_ids if letter_id_key(i)[0] >= 0]
        removed = 0
        try:
            for at in range(0, len(valid), 1000):
                removed += await self._client.xdel(self._letters_key, *valid[at : at + 1000])
        except RedisError as exc:
            raise self._error("delete_dead_letters", exc) from exc
        return removed

    async def dead_letter_counts(self) -> DeadLetterCounts:
        """How many dead letters are kept, and how many were dropped beyond the bound.

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        kept, dropped = await self._run("dead_letter_counts")
        return DeadLetterCounts(int(kept), int(dropped))

    # -- internals ----------------------------------------------------------------------------

    async def put_runs(
        self, process: str, snapshot: bytes, forget_after_seconds: float
    ) -> list[bytes]:
        """Keep the runs of ``process``; take its commands (see `Backend.put_runs`).

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        forget_ms = str(max(1, round(forget_after_seconds * 1000)))
        commands: list[bytes] = await self._run("put_runs", process, snapshot, forget_ms)
        return commands

    async def run_snapshots(self) -> list[RunSnapshot]:
        """Every process's runs not forgotten yet (see `Backend.run_snapshots`).

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        reply = await self._run("run_snapshots")
        now = int(reply[0])
        return [
            RunSnapshot(reply[i].decode(), max(0.0, (now - int(reply[i + 1])) / 1000), reply[i + 2])
            for i in range(1, len(reply), 3)
        ]

    async def push_run_command(self, process: str, command: bytes) -> bool:
        """Queue ``command`` for ``process`` (see `Backend.push_run_command`).

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        return bool(await self._run("push_run_command", process, command))

    async def delete_runs(self, process: str) -> None:
        """Remove the runs of ``process`` and its commands.

        Raises:
            BackendError: Redis is unreachable or failed.
        """
        await self._run("delete_runs", process)

    async def _run(self, name: str, *args: str | bytes) -> Any:
        try:
            return await self._call(self._scripts[name], (), args)
        except RedisError as exc:
            raise self._error(name, exc) from exc

    def _error(self, operation: str, exc: RedisError) -> BackendError:
        """What failed, where, the cause, and what to do: one message per kind of failure."""
        where, cause = f"redis at {self._url}", _describe(exc)
        retried = f"during {operation}, after {_RETRIES} retries"
        unreachable = Reason.BACKEND_UNREACHABLE
        if isinstance(exc, BatcherClosedError):
            ran = "may have run" if exc.sent else "did not run"
            return BackendError(
                f"{where}: the backend was closed during {operation}, which {ran}; "
                "expected only while the organism stops",
                reason=Reason.BACKEND_ERROR,
            )
        if isinstance(exc, RedisTimeoutError):
            if "connecting" in str(exc):  # redis-py: "Timeout connecting to server"
                return BackendError(
                    f"{where} did not accept a connection within {self._connect_timeout:g} s "
                    f"({retried}): {cause}; check that the host is up and reachable from "
                    "here (address, firewall), or raise the connect timeout with "
                    "?socket_connect_timeout=SECONDS in backend.redis_url",
                    reason=unreachable,
                )
            return BackendError(
                f"{where} did not answer within {self._socket_timeout:g} s ({retried}): "
                f"{cause}; the server is stalled or overloaded: check its load "
                "(redis-cli INFO, SLOWLOG GET) and for long scripts or commands, or raise the "
                "timeout with ?socket_timeout=SECONDS in backend.redis_url",
                reason=unreachable,
            )
        if isinstance(exc, AuthenticationError | AuthorizationError | NoPermissionError):
            return BackendError(
                f"{where} refused this client during {operation}: {cause}; put the right "
                "user and password in backend.redis_url (redis://user:password@host:port/db) "
                "and check the user's ACL",
                reason=Reason.BACKEND_ERROR,
            )
        if isinstance(exc, RedisConnectionError) and "No connection available" in str(exc):
            return BackendError(  # redis-py's BlockingConnectionPool gave up waiting
                f"{where}: no pooled connection came free within {self._pool_timeout:g} s "
                f"(during {operation}): all {self._max_connections} were busy; Redis is slow "
                "to answer (check its load: redis-cli INFO, SLOWLOG GET) or more operations "
                "run at once than backend.redis_max_connections allows: raise it",
                reason=unreachable,
            )
        if isinstance(exc, RedisConnectionError):
            os_cause = _os_cause(exc)
            if isinstance(os_cause, socket.gaierror):
                return BackendError(
                    f"{where}: the host name is not known ({retried}): {cause}; fix the host "
                    "in backend.redis_url in organism.yaml",
                    reason=unreachable,
                )
            if os_cause is not None and os_cause.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return BackendError(
                    f"{where} unreachable: nothing listens there ({retried}): {cause}; start "
                    "redis-server there or fix backend.redis_url in organism.yaml",
                    reason=unreachable,
                )
            return BackendError(
                f"{where} dropped the connection ({retried}): {cause}; the server restarted, "
                "crashed or closed this client (CLIENT KILL, maxclients, its idle timeout, a "
                "proxy in between): check the server's log",
                reason=unreachable,
            )
        if isinstance(exc, ResponseError) and str(exc).startswith("BUSY"):
            return BackendError(
                f"{where} is busy running another client's script and refused {operation}: "
                f"{cause}; a script has run longer than the server's busy-reply-threshold: "
                "find it (SLOWLOG GET, the server's log), stop it with SCRIPT KILL, and fix "
                "the client that runs it",
                reason=unreachable,
            )
        return BackendError(f"{where} failed {operation}: {cause}", reason=Reason.BACKEND_ERROR)
