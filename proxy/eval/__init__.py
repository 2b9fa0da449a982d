"""`itsproxy eval`: accuracy against compute, per route and n, measured through the proxy.

dataset (rows) -> runner (requests via the openai client, resumable JSONL) -> grade (answers,
candidates, judge calls) -> report (table) -> plots (PNG). cli registers the subcommand; run
wires them; direct is the no-proxy baseline; capitals is the shipped dataset's sound checker.
"""
