#!/usr/bin/env python3
"""Signing cost: proxy throughput with DKIM signing as a ratio of unsigned pass-through.

    /tmp/venv/bin/python bench/sign_bench.py [--messages 1000] [--rounds 3]

One private Postfix and one proxy (tests/support/pipeline.py, scanning off),
three paths measured alternately in the same run with Postfix's smtp-source
(5 KB messages, concurrency 1 and 20; best of --rounds, as in
bench/proxy_bench.py, with the same smtp_source and drain from bench/common.py):

    unsigned:  smtpd (proxy filter) -> proxy inbound listener -> smtpd -> queue
    rsa:       smtpd (proxy filter) -> proxy outbound listener, RSA-2048 signature
    rsa+ed:    the same, dual-signed RSA-2048 + Ed25519 (RFC 8463)
    not ours:  the outbound listener with a From domain not in the signing
               table: the signer looks and passes (the cost of deciding)

smtp-source writes From: with the envelope sender, so the sender domain
picks the signing table entry. Every signed message's signature is counted
from the proxy's log, so a path that silently stopped signing shows up.
Target (issue 6): RSA-2048 signing costs at most 10% of pass-through.
Before the pipeline starts, the signer alone is timed in process on the
same kind of message (CPU per message of ProxySigner.sign): the figure that
decides the ratio on a machine whose cores Postfix and the proxy saturate,
and far less noisy than throughput on a shared one.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MESSAGE_SIZE, cpu_seconds, drain, smtp_source  # noqa: E402
from tests.support.net import free_port, port_open  # noqa: E402
from tests.support.pipeline import Pipeline  # noqa: E402
from tests.support.postfix import wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SENDERS = {"unsigned": "bench@example.org", "not ours": "bench@other.example",
           "rsa": "bench@rsa.example", "rsa+ed": "bench@dual.example"}


def keygen(directory: Path, domain: str, selector: str, kind: str) -> Path:
    subprocess.run([sys.executable, "-m", "smtpproxy.cli", "dkim", "keygen", "-d", domain, "-s",
                    selector, "--type", kind, "--dir", str(directory)],
                   check=True, capture_output=True, cwd=ROOT, timeout=120)
    return directory / f"{domain}.{selector}.key"


def smtp_source_message(sender: str) -> bytes:
    """What the proxy gets from smtp-source through smtpd: its headers, Postfix's Received,
    MESSAGE_SIZE bytes of numbered 79-character lines."""
    lines = b"".join(b"%d" % i + b"X" * (78 - len(b"%d" % i)) + b"\r\n"
                     for i in range(1, MESSAGE_SIZE // 80 + 2))[:MESSAGE_SIZE]
    return (b"Received: from client.example.org (localhost [127.0.0.1])\r\n\tby bench.example "
            b"(Postfix) with ESMTP id 4F1B2C3D4E\r\n\tfor <sink@example.net>; Sat, 21 Nov 2026 "
            b"04:48:50 +0000 (UTC)\r\n" + f"From: <{sender}>\r\n".encode() +
            b"To: <sink@example.net>\r\nDate: Sat, 21 Nov 2026 04:48:50 +0000 (UTC)\r\n"
            b"Message-Id: <179b.0003.0000@client.example.org>\r\nSubject: benchmark message\r\n"
            b"\r\n" + lines + b"\r\n")


def signer_cpu_ms(key_table: Path, signing_table: Path, messages: int) -> dict[str, float]:
    """CPU per message of the signer alone (ProxySigner.sign on an event loop, logging off)."""
    import asyncio

    from smtpproxy.common import config
    from smtpproxy.sign.setup import build_signer
    from smtpproxy.transaction import ClientInfo, Transaction

    cfg = config.build(config.Config, {"sign": {"key_table": str(key_table),
                                                "signing_table": str(signing_table)}})
    signer = build_signer(cfg)

    async def run(content: bytes) -> float:
        txn = Transaction(session_id="B", listener="outbound", profile="outbound",
                          client=ClientInfo(addr="127.0.0.1"), mail_from="bench@example.org",
                          mail_options=[], rcpt_tos=["sink@example.net"], rcpt_options=[[]],
                          content=content)
        for _ in range(50):  # warm-up
            await signer.sign(txn)
        start = time.process_time()
        for _ in range(messages):
            await signer.sign(txn)
        return (time.process_time() - start) / messages * 1000

    return {name: min(asyncio.run(run(smtp_source_message(SENDERS[name]))) for _ in range(3))
            for name in ("not ours", "rsa", "rsa+ed")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool-threads", type=int, default=4, help="sign.pool_threads")
    parser.add_argument("--in-process-messages", type=int, default=2000,
                        help="messages for the signer-alone CPU figure (0: skip it)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sign-bench-") as tmp:
        keys = Path(tmp) / "keys"
        keys.mkdir()
        rsa1 = keygen(keys, "rsa.example", "s1", "rsa")
        rsa2 = keygen(keys, "dual.example", "r1", "rsa")
        ed = keygen(keys, "dual.example", "e1", "ed25519")
        (keys / "key_table").write_text(f"rsa rsa.example:s1:{rsa1}\nrsa2 dual.example:r1:{rsa2}\n"
                                        f"ed dual.example:e1:{ed}\n")
        (keys / "signing_table").write_text("rsa.example rsa\ndual.example rsa2,ed\n")
        cpu = (signer_cpu_ms(keys / "key_table", keys / "signing_table", args.in_process_messages)
               if args.in_process_messages else {})
        p = Pipeline(Path(tmp) / "p", proxy_extra="max_sessions = 500", extra_config=f"""
[sign]
key_table = "{keys / 'key_table'}"
signing_table = "{keys / 'signing_table'}"
pool_threads = {args.pool_threads}
""")
        outbound_proxy, submission = free_port(), free_port()
        p.proxy.config_text += f"""
[[proxy.listeners]]
name = "outbound"
listen = "127.0.0.1:{outbound_proxy}"
profile = "outbound"
downstream = "127.0.0.1:{p.reinject_port}"
"""
        p.postfix.add_service(f"127.0.0.1:{submission}", {
            "smtpd_proxy_filter": f"127.0.0.1:{outbound_proxy}",
            "smtpd_client_connection_count_limit": "0"})
        p.start()
        try:
            wait_until(lambda: port_open(submission), 20, "submission port")
            p.postfix.params["default_transport"] = "discard"
            p.postfix.params["relayhost"] = ""
            p.postfix.reload()
            time.sleep(1)
            ports = {"unsigned": p.inbound_port, "not ours": submission, "rsa": submission,
                     "rsa+ed": submission}
            for name, port in ports.items():  # warm-up: smtpd processes, key tables, threads
                smtp_source(port, 100, 10, SENDERS[name])
            smtp_source(p.direct_port, 10, 1)
            drain(p)
            results = {}
            # The proxy's own CPU per message on each path (user + system,
            # /proc): what signing adds to the process, whatever the load.
            proxy_cpu: dict[tuple[int, str], list[float]] = {}
            for concurrency in (1, 20):
                n = args.messages if concurrency > 1 else max(200, args.messages // 4)
                best = dict.fromkeys(ports, 0.0)
                for _ in range(args.rounds):
                    for name, port in ports.items():
                        before = cpu_seconds(p.proxy.proc.pid)
                        got = smtp_source(port, n, concurrency, SENDERS[name])
                        best[name] = max(best[name], got)
                        proxy_cpu.setdefault((concurrency, name), []).append(
                            (cpu_seconds(p.proxy.proc.pid) - before) / n)
                        drain(p)
                results[concurrency] = best
            log = p.proxy.log_text()
        finally:
            p.stop()

    signed_rsa = log.count("DKIM signed d=rsa.example s=s1 a=rsa-sha256")
    signed_dual = log.count("DKIM signed d=dual.example s=r1 a=rsa-sha256, d=dual.example s=e1 "
                            "a=ed25519-sha256")
    print(f"signing benchmark: {MESSAGE_SIZE // 1024} KB messages, best of {args.rounds} rounds, "
          f"Postfix -> proxy over TCP, scanning off, {args.pool_threads} signing threads")
    print(f"{'concurrency':>11} {'unsigned msg/s':>15} {'not ours':>9} {'ratio':>6} "
          f"{'rsa msg/s':>10} {'ratio':>6} {'rsa+ed msg/s':>13} {'ratio':>6}")
    for concurrency, best in results.items():
        base = best["unsigned"]
        print(f"{concurrency:>11} {base:>15.0f} {best['not ours']:>9.0f} "
              f"{best['not ours'] / base:>6.2f} {best['rsa']:>10.0f} {best['rsa'] / base:>6.2f} "
              f"{best['rsa+ed']:>13.0f} {best['rsa+ed'] / base:>6.2f}")
    print(f"messages signed during the run: {signed_rsa} RSA, {signed_dual} RSA + Ed25519")
    for concurrency in results:
        print(f"proxy CPU per message at concurrency {concurrency}, median of the runs (ms): "
              + ", ".join(f"{name} {statistics.median(proxy_cpu[concurrency, name]) * 1000:.2f}"
                          for name in SENDERS))
    if cpu:
        print("signer alone, in process, CPU per message (best of 3 x "
              f"{args.in_process_messages}): " + ", ".join(f"{name} {ms:.3f} ms"
                                                          for name, ms in cpu.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
