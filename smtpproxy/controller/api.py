"""The endpoints, in rspamd's shapes (docs/controller.md has the compatibility notes).

  GET  /ping                          "pong"                      no password
  POST /checkv2                       scan a message (rspamc symbols, check)   read
  POST /learnspam, /learnham          learn into the Bayes store  write
  GET  /stat                          counters (rspamc stat)      read
  GET  /history  POST /history        rows, newest first (POST: a JSON filter)  read
  GET  /trace?id=REF|QID|MESSAGE-ID   one row, symbols explained  read
  POST /historyreset                  delete every row            write
  GET  /actions, /symbols, /graph     thresholds, symbols table, messages per minute  read
  GET  /auth                          what this password may do (rspamd's web interface)  read
  POST /learnhistory                  ours: learn a history row's message, if still kept  write
  GET  /health                        ours: store and resolver probed, the last day's counts  read
  GET  /, /static/*                   the web interface (controller/web.py)   none

Scanning here is the engine alone: no greylisting, no autolearn, nothing
relayed; the scan gets a history row as in rspamd (listener ``controller``,
outcome ``checked``, no queue id).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from aiohttp import web

from smtpproxy.common.metrics import totals
from smtpproxy.controller.auth import READ, WRITE
from smtpproxy.controller.history import ACTIONS, HistoryStore, matches
from smtpproxy.delivery import Outcome
from smtpproxy.relay import Reply
from smtpproxy.scan.bayes.storage import ALREADY, HAM, SPAM, BayesStore, message_id
from smtpproxy.scan.bayes.tokenizer import tokenize
from smtpproxy.scan.checks.base import CheckContext
from smtpproxy.scan.message import parse
from smtpproxy.transaction import ClientInfo, Transaction, Verdict

CONTROLLER = web.AppKey("controller", object)
# A message up to this size is parsed on the event loop, a bigger one in a worker thread.
INLINE_PARSE_MAX_BYTES = 256 * 1024
HISTORY_DEFAULT_ROWS = 100
HISTORY_MAX_ROWS = 1000
SPAM_ACTIONS = ("reject", "rewrite subject", "add header")


class ControllerError(Exception):
    """An answer other than 200, with the short text of its JSON body."""

    def __init__(self, status: int, error: str):
        super().__init__(error)
        self.status, self.error = status, error


def json_response(data, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, ensure_ascii=False), status=status,
                        content_type="application/json")


def json_error(status: int, error: str) -> web.Response:
    # The error is the status line's reason too: rspamc prints "HTTP error: 403, <reason>".
    response = json_response({"error": error}, status)
    response.set_status(status, error.replace("\r", " ").replace("\n", " ")[:200])
    return response


def _version() -> str:
    try:
        return package_version("smtpproxy")
    except PackageNotFoundError:
        return "unknown"


async def _parsed(raw: bytes):
    if len(raw) <= INLINE_PARSE_MAX_BYTES:
        return parse(raw)
    return await asyncio.to_thread(parse, raw)


def _engine(ctl):
    engine = getattr(ctl.service.delivery.hook, "engine", None)
    if engine is None:
        raise ControllerError(503, "scanning is off (scan.enabled = false)")
    return engine


async def _store(ctl):
    store = await ctl.service.open_store()
    if store is None:
        raise ControllerError(503, "no store")
    return store


# ---------------------------------------------------------------- endpoints


async def ping(request: web.Request) -> web.Response:
    return web.Response(text="pong\r\n", content_type="text/plain")


async def auth(request: web.Request) -> web.Response:
    ctl = request.app[CONTROLLER]
    level = await ctl.authorize(request, READ)
    return json_response({"auth": "ok", "version": _version(), "uptime": int(time.time() - ctl.started),
                          "read_only": level != WRITE, "hostname": ctl.service.hostname})


async def checkv2(request: web.Request) -> web.Response:
    ctl = request.app[CONTROLLER]
    await ctl.authorize(request, READ)
    raw = await ctl.read_body(request)
    engine = _engine(ctl)
    headers = request.headers
    client = ClientInfo(addr=headers.get("IP"), helo=headers.get("Helo"),
                        name=headers.get("Hostname"))
    message = await _parsed(raw)
    ctx = CheckContext(message=message, client=client, mail_from=headers.get("From", ""),
                       rcpt_tos=[r.strip() for value in headers.getall("Rcpt", [])
                                 for r in value.split(",") if r.strip()],
                       profile=headers.get("Profile", "inbound"), resolver=ctl.service.resolver,
                       store=await ctl.service.open_store())
    try:
        async with asyncio.timeout(ctl.cfg.proxy.scan_timeout_s):
            result = await engine.scan(ctx)
    except TimeoutError:
        raise ControllerError(504, "scan timed out") from None
    symbols = {}
    for sym in result.symbols.values():
        definition = engine.symbols.get(sym.name)
        entry = {"name": sym.name, "score": round(sym.score, 3), "metric_score": round(
            definition.score if definition else sym.score, 3),
            "description": definition.description if definition else ""}
        if sym.options:
            entry["options"] = list(sym.options)
        symbols[sym.name] = entry
    thresholds = {name.replace("_", " "): value for name, value in
                  vars(ctl.cfg.scan.actions).items() if value}
    messages = {}
    if result.action == "reject":
        messages["smtp_message"] = ctl.cfg.scan.reject_reply.split(" ", 2)[-1]
    reply = {
        "is_skipped": False, "score": round(result.score, 2),
        "required_score": round(result.required_score, 2), "action": result.action,
        "thresholds": thresholds, "symbols": symbols, "messages": messages,
        "message-id": (message.header("Message-ID") or "").strip().strip("<>"),
        "time_real": round(result.elapsed_s, 4), "milter": {},
    }
    if "Queue-Id" in headers:
        reply["queue-id"] = headers["Queue-Id"]
    _record_scan(ctl, raw, ctx, result)
    return json_response(reply)


def _record_scan(ctl, raw: bytes, ctx: CheckContext, result) -> None:
    """The scan's history row, as rspamd keeps one for every /checkv2 (queued, no I/O)."""
    txn = Transaction(session_id="ctl-" + os.urandom(5).hex(), listener="controller",
                      profile=ctx.profile, client=ctx.client, mail_from=ctx.mail_from,
                      mail_options=[], rcpt_tos=list(ctx.rcpt_tos), rcpt_options=[], content=raw)
    verdict = Verdict(scan_action=result.action, scan_result=result,
                      scan_seconds=result.elapsed_s)
    reply = Reply.parse("200 scanned by the controller")
    ctl.service.history.record(txn, verdict, Outcome(reply, "checked", str(reply)))


async def _learn(request: web.Request, cls: str) -> web.Response:
    ctl = request.app[CONTROLLER]
    await ctl.authorize(request, WRITE)
    raw = await ctl.read_body(request)
    return await _learn_raw(ctl, raw, cls)


async def _learn_raw(ctl, raw: bytes, cls: str) -> web.Response:
    store = await _store(ctl)
    bayes_cfg = ctl.cfg.scan.bayes

    def prepare():
        message = parse(raw)
        return (message.header("Message-ID") or "").strip().strip("<>"), \
            tokenize(message, bayes_cfg.max_tokens), message_id(raw)

    shown_id, tokens, msg_id = await asyncio.to_thread(prepare)
    outcome = await BayesStore(store, bayes_cfg.token_ttl_s).learn(msg_id, tokens, cls)
    if outcome == ALREADY:
        # rspamd's answer (208 Already Reported): rspamc prints it and exits 0.
        return json_error(208, f"<{shown_id or msg_id}> has been already learned as {cls}, "
                               "ignore it")
    return json_response({"success": True})


async def learnspam(request: web.Request) -> web.Response:
    return await _learn(request, SPAM)


async def learnham(request: web.Request) -> web.Response:
    return await _learn(request, HAM)


async def learnhistory(request: web.Request) -> web.Response:
    """POST {"seq": N, "class": "spam"|"ham"}: learn the message of a history row.

    Ours, for the web interface: rows hold no body, so only a message this
    process still keeps in memory (history.keep_messages_bytes, the newest
    first) can be learned; 404 otherwise (another host scanned it, or it is
    too old: learn it from the mailbox with rspamc or smtpproxy learn)."""
    ctl = request.app[CONTROLLER]
    await ctl.authorize(request, WRITE)
    try:
        source = json.loads(await ctl.read_body(request))
    except ValueError:
        raise ControllerError(400, "malformed JSON") from None
    if not isinstance(source, dict) or not isinstance(source.get("seq"), int) \
            or source.get("class") not in (SPAM, HAM):
        raise ControllerError(400, 'expected {"seq": N, "class": "spam" or "ham"}')
    raw = ctl.service.history.kept(source["seq"])
    if raw is None:
        raise ControllerError(404, "that message is not kept by this host any more")
    return await _learn_raw(ctl, raw, source["class"])


# A health probe waits at most this long for the store or the resolver.
HEALTH_TIMEOUT_S = 3.0


async def _probe(check) -> dict:
    started = time.monotonic()
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            await check()
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {HEALTH_TIMEOUT_S:g} s"}
    except Exception as exc:  # a probe reports trouble, it never fails the request
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    return {"ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}


async def health(request: web.Request) -> web.Response:
    """GET /health (ours, for the web interface): the store and the resolver
    probed now, and messages by action over the last 24 hours in this process."""
    ctl = request.app[CONTROLLER]
    await ctl.authorize(request, READ)

    async def store_probe():
        store = await ctl.service.open_store()
        await store.get(store.key("health", "probe"))

    async def dns_probe():
        # A fresh name each time: the cache must not answer for a dead resolver.
        # NXDOMAIN is a healthy answer (RFC 6761: .invalid never exists).
        await ctl.service.resolver.query(f"probe-{os.urandom(6).hex()}.invalid", "A")

    store, dns = await asyncio.gather(_probe(store_probe), _probe(dns_probe))
    store["backend"] = "redis" if ctl.cfg.store.url.startswith(("redis", "rediss", "unix")) \
        else "sqlite"
    dns["nameserver"] = ctl.cfg.dns.nameserver or "/etc/resolv.conf"
    return json_response({"store": store, "dns": dns,
                          "day": ctl.service.history.throughput.totals(time.time())})


async def stat(request: web.Request) -> web.Response:
    ctl = request.app[CONTROLLER]
    level = await ctl.authorize(request, READ)
    # Over every worker process when there are several (proxy.workers).
    figures = totals(ctl.service.stats.registry)
    actions = {action: 0 for action in ACTIONS}
    for (action,), count in figures["smtpproxy_scan_actions_total"]["values"]:
        actions[action] = actions.get(action, 0) + int(count)
    scanned = sum(actions.values())
    spam = sum(actions[a] for a in SPAM_ACTIONS)
    store = await ctl.service.open_store()
    nspam = nham = 0
    if store is not None:
        counts = await BayesStore(store, ctl.cfg.scan.bayes.token_ttl_s).counts()
        nspam, nham = counts.nspam, counts.nham
    backend = "redis" if ctl.cfg.store.url.startswith(("redis", "rediss", "unix")) else "sqlite"
    writer = ctl.service.history
    return json_response({
        "read_only": level != WRITE, "version": _version(),
        "uptime": int(time.time() - ctl.started),
        "scanned": scanned, "learned": nspam + nham, "actions": actions,
        "spam_count": spam, "ham_count": scanned - spam,
        "connections": int(sum(v for _, v in figures["smtpproxy_sessions_total"]["values"])),
        "control_connections": ctl.requests,
        "scan_times": list(writer.scan_times),
        "statfiles": [
            {"symbol": "BAYES_SPAM", "type": backend, "revision": nspam, "users": 1,
             "languages": 0, "size": 0, "total": 0, "used": 0},
            {"symbol": "BAYES_HAM", "type": backend, "revision": nham, "users": 1,
             "languages": 0, "size": 0, "total": 0, "used": 0},
        ],
        "total_learns": nspam + nham,
        "history": {"written": writer.written, "dropped": writer.dropped},
    })


def _history(ctl, store) -> HistoryStore:
    if not ctl.cfg.history.enabled:
        raise ControllerError(404, "history is off (history.enabled = false)")
    return HistoryStore(store, ctl.cfg.history)


def _filters(source) -> dict:
    try:
        limit = int(source.get("limit", HISTORY_DEFAULT_ROWS))
        since = float(source.get("since", 0) or 0)
    except (TypeError, ValueError):
        raise ControllerError(400, "limit and since must be numbers") from None
    if not 0 < limit <= HISTORY_MAX_ROWS:
        raise ControllerError(400, f"limit must be 1 to {HISTORY_MAX_ROWS}")
    texts = {}
    for key in ("action", "from", "rcpt", "q"):
        value = source.get(key, "")
        if not isinstance(value, str):
            raise ControllerError(400, f"{key} must be a string")
        texts[key] = value
    return {"limit": limit, "since": since, **texts}


async def history(request: web.Request) -> web.Response:
    ctl = request.app[CONTROLLER]
    await ctl.authorize(request, READ)
    if request.method == "POST":
        body = await ctl.read_body(request, required=False)
        try:
            source = json.loads(body) if body else {}
        except ValueError:
            raise ControllerError(400, "malformed JSON") from None
        if not isinstance(source, dict):
            raise ControllerError(400, "expected a JSON object")
    else:
        source = request.query
    f = _filters(source)
    rows = []
    async for row in _history(ctl, await _store(ctl)).newest():
        if f["since"] and row.get("unix_time", 0) < f["since"]:
            break
        if matches(row, action=f["action"], sender=f["from"], rcpt=f["rcpt"], text=f["q"]):
            row["kept"] = ctl.service.history.kept(row.get("seq", -1)) is not None
            rows.append(row)
            if len(rows) >= f["limit"]:
                break
    return json_response({"version": 2, "rows": rows})


async def trace(request: web.Request) -> web.Response:
    ctl = request.app[CONTROLLER]
    await ctl.authorize(request, READ)
    token = request.query.get("id", "")
    if not token:
        raise ControllerError(400, "id= is required (a reference, queue id or Message-ID)")
    row = await _history(ctl, await _store(ctl)).find(token)
    if row is None:
        raise ControllerError(404, f"no history row for {token}")
    engine = getattr(ctl.service.delivery.hook, "engine", None)
    for name, sym in row.get("symbols", {}).items():
        definition = engine.symbols.get(name) if engine else None
        sym["description"] = definition.description if definition else ""
    return json_response(row)


async def historyreset(request: web.Request) -> web.Response:
    ctl = request.app[CONTROLLER]
    await ctl.authorize(request, WRITE)
    deleted = await _history(ctl, await _store(ctl)).reset()
    return json_response({"success": True, "deleted": deleted})


async def actions(request: web.Request) -> web.Response:
    ctl = request.app[CONTROLLER]
    await ctl.authorize(request, READ)
    thresholds = ctl.cfg.scan.actions
    out = [{"action": name.replace("_", " "), "value": value}
           for name, value in (("reject", thresholds.reject),
                               ("rewrite_subject", thresholds.rewrite_subject),
                               ("add_header", thresholds.add_header),
                               ("greylist", thresholds.greylist)) if value]
    return json_response(out)


async def symbols(request: web.Request) -> web.Response:
    ctl = request.app[CONTROLLER]
    await ctl.authorize(request, READ)
    engine = _engine(ctl)
    groups: list[dict] = []
    seen: set[str] = set()

    def rule(name: str, group: str) -> dict:
        definition = engine.symbols[name]
        seen.add(name)
        return {"symbol": name, "weight": definition.score, "description": definition.description,
                "group": group, **({"force_action": definition.force_action}
                                   if definition.force_action else {})}

    for check in engine.checks:
        names = sorted(n for n in check.symbols if n in engine.symbols and n not in seen)
        groups.append({"group": check.name, "rules": [rule(n, check.name) for n in names]})
    rest = sorted(n for n in engine.symbols if n not in seen)
    if rest:
        groups.append({"group": "engine", "rules": [rule(n, "engine") for n in rest]})
    return json_response(groups)


GRAPH_TYPES = {"hourly": (60, 1), "daily": (1440, 5), "weekly": (1440, 30), "monthly": (1440, 60)}


async def graph(request: web.Request) -> web.Response:
    ctl = request.app[CONTROLLER]
    await ctl.authorize(request, READ)
    kind = request.query.get("type", "daily")
    if kind not in GRAPH_TYPES:
        raise ControllerError(400, f"type must be one of {', '.join(GRAPH_TYPES)}")
    minutes, step = GRAPH_TYPES[kind]
    series = ctl.service.history.throughput.series(time.time(), minutes, step)
    # rspamd's shape: one array per action (its order), points {x: unix time, y: rate}.
    return json_response([[{"x": x, "y": y} for x, y in series[action]] for action in ACTIONS])


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ping", ping)
    app.router.add_get("/auth", auth)
    app.router.add_post("/checkv2", checkv2)
    app.router.add_post("/learnspam", learnspam)
    app.router.add_post("/learnham", learnham)
    app.router.add_post("/learnhistory", learnhistory)
    app.router.add_get("/health", health)
    app.router.add_get("/stat", stat)
    app.router.add_get("/history", history)
    app.router.add_post("/history", history)
    app.router.add_get("/trace", trace)
    app.router.add_post("/historyreset", historyreset)
    app.router.add_get("/actions", actions)
    app.router.add_get("/symbols", symbols)
    app.router.add_get("/graph", graph)
