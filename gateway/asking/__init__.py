"""Asking one crowd worker: its prompt (`prompts`), its dialect's request (`dialects`), reading its reply as a vote
(`extract`), and the one place they meet, a member's call from request to Vote (`asker`).

Why a package of its own: what a worker is asked and how its answer is read change together (a prompt style decides
the request's constraint and how the first token is read), while `gateway/upstream/` moves bytes and never knows
about labels, and `ensembles/` aggregates votes it is handed. Empty on purpose: `gateway.config` imports `prompts`
(a member's template), and the asker imports `gateway.config`.
"""
