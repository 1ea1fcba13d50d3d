"""The agent layer: model calls as recorded, budgeted workflow steps."""

from agentflow.agent._chat import MODEL_RETRY, Budget, chat, spent
from agentflow.agent._usage import UsageSummary, usage

__all__ = ["MODEL_RETRY", "Budget", "UsageSummary", "chat", "spent", "usage"]
