"""One endpoint for the whole cluster: an OpenAI-compatible gateway that starts models on demand on their node
sets, with API keys, quotas, usage accounting and metrics (``sparkhelpers gateway|keys|usage``)."""
