"""A small labelled set for memory ranking (issue 11): facts with their age, and queries
with the one fact that answers each.

What it holds, so the figures can be read: exact identifiers (tickets, error codes,
names) among look-alikes, paraphrased questions, and facts superseded by a newer one on
the same subject (a moved database, an upgraded cluster, a changed preference or time),
where the answer is the newer fact.
"""

from __future__ import annotations

DAY_S = 86400.0

# (key, text, age in days)
FACTS: list[tuple[str, str, float]] = [
    ("db_old", "The production database runs on host db-prod-3 in Frankfurt", 90),
    ("db_new", "The production database moved to host db-prod-9 in Amsterdam", 3),
    ("inc1", "Ticket INC-20931: the nightly export fails when the disk is full", 20),
    ("inc2", "Ticket INC-20417: the login page is slow for users in Asia", 25),
    ("export", "The nightly export job runs at 02:00 and writes to the reports bucket", 40),
    ("style_old", "The operator prefers answers in short bullet points", 60),
    ("style_new", "The operator now wants detailed answers with examples", 2),
    ("alice_phone", "Alice's phone number is +49 170 5550123", 10),
    ("bob_phone", "Bob's phone number is +49 170 5559876", 10),
    ("k8s_old", "The staging cluster uses Kubernetes 1.29", 30),
    ("k8s_new", "The staging cluster was upgraded to Kubernetes 1.31", 1),
    ("vpn", "The VPN certificate expires on 2026-03-14", 15),
    ("bill", "Our cloud bill for March was 4,210 EUR", 50),
    ("rate", "The API rate limit for partners is 600 requests per minute", 35),
    ("wifi", "The office wifi password is rotated every Monday", 12),
    ("falcon", "Project Falcon's deadline is the end of June", 20),
    ("heron", "Project Heron is paused until the budget review", 18),
    ("release", "The release checklist lives in docs/release.md", 45),
    ("e4711", "Error code E4711 means the upstream payment provider timed out", 22),
    ("e4712", "Error code E4712 means the card was declined", 22),
    ("standup_old", "The team standup is at 9:30 on weekdays", 70),
    ("standup_new", "The team standup moved to 10:00 on weekdays", 4),
    ("acme", "The customer Acme Corp pays by invoice, net 30 days", 33),
    ("backup_key", "The backups are encrypted with the key named backup-2024", 80),
    ("grafana", "Grafana dashboards are at the monitoring host mon-1", 27),
]

QUERIES: list[tuple[str, str]] = [
    ("where does the production database run now?", "db_new"),
    ("INC-20931", "inc1"),
    ("what does E4712 mean?", "e4712"),
    ("how does the operator like answers?", "style_new"),
    ("Bob's phone", "bob_phone"),
    ("which Kubernetes version is staging on?", "k8s_new"),
    ("when does the VPN certificate expire?", "vpn"),
    ("when is standup?", "standup_new"),
    ("partner API requests limit", "rate"),
    ("Falcon deadline", "falcon"),
    ("Heron status", "heron"),
    ("how does Acme pay?", "acme"),
    ("nightly export failure ticket", "inc1"),
    ("card payment error E4711", "e4711"),
    ("where are the dashboards", "grafana"),
    ("release checklist location", "release"),
]
