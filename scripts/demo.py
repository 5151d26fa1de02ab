"""Bring the system up on loopback, send one message through it, show what arrived.

    client (127.0.0.2) -> Postfix smtpd :A (smtpd_proxy_filter) -> smtpproxy
      -> Postfix smtpd :B (re-injection) -> queue -> smtp-sink (writes the message to disk)

Everything is private to a temporary directory and stopped at the end.
"""

from __future__ import annotations

import smtplib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.dns_server import DnsTestServer  # noqa: E402
from tests.support.pipeline import Pipeline  # noqa: E402


def main() -> int:
    # A local DNS server answers the checks' lookups (the sender's SPF record),
    # so the demo needs no network.
    dns = DnsTestServer({"example.org": [("TXT", "v=spf1 ip4:127.0.0.2 -all")]}).start()
    with tempfile.TemporaryDirectory(prefix="smtpproxy-demo-") as tmp:
        p = Pipeline(Path(tmp), scan=True, extra_config=f'[dns]\nnameserver = "{dns.nameserver}"\n')
        print(f"==> starting a private Postfix (before-filter smtpd on 127.0.0.1:{p.inbound_port},"
              f" re-injection smtpd on 127.0.0.1:{p.reinject_port}),")
        print(f"    smtpproxy on 127.0.0.1:{p.proxy_port} (scoring on, DNS from {dns.nameserver})"
              f" and a sink on 127.0.0.1:{p.sink_port}")
        p.start()
        try:
            message = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\n"
                       b"Subject: Hello through smtpproxy\r\nMessage-ID: <demo-1@example.org>\r\n"
                       b"Date: Sat, 21 Nov 2026 00:00:00 +0000\r\n\r\n"
                       b"This message went Postfix -> smtpproxy -> Postfix.\r\n")
            print("==> sending one message from 127.0.0.2 (HELO client.example.org)")
            with smtplib.SMTP("127.0.0.1", p.inbound_port, source_address=("127.0.0.2", 0)) as smtp:
                smtp.ehlo("client.example.org")
                smtp.sendmail("alice@example.org", ["bob@example.net"], message)
                print(f"    Postfix answered: {smtp.noop()[0]} (the message was accepted)")
            (delivered,) = p.wait_delivered(1, 60)
            print("\n==> smtpproxy's log line for the message:")
            for line in p.proxy.log_text().splitlines():
                if "verdict=" in line:
                    print("    " + line)
            print("\n==> Postfix's log (the re-injection listener names the real client):")
            for line in p.postfix.log_text().splitlines():
                if "orig_client=" in line or "proxy-accept" in line or "status=sent" in line:
                    print("    " + line)
            print("\n==> the message as it arrived at the sink:")
            print("    " + delivered.message.decode("utf-8", "replace").replace("\n", "\n    "))
        finally:
            p.stop()
            dns.stop()
    print("==> stopped; nothing was left running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
