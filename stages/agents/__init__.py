"""Agents that act in environments: the ReAct turn format (react.py) and an asyncio episode runner
(episodes.py). Model-free: a policy is any async callable from messages to text. Nothing here imports Ray or
Prefect."""
