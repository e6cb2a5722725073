"""`herd reconcile`: what cron runs to keep the DB and the hosts in agreement.

lock (one run at a time) → survey (every host, concurrently, with a timeout each) →
drift (each kind of disagreement a ``Finding``) → repair (by policy) → report
(table, JSON, Prometheus textfile, exit code).
"""
