"""Client dialects: the APIs a client may speak to the gateway (OpenAI chat completions,
Anthropic Messages), each translating requests, answers, stream events and errors behind the
one interface of :class:`apps.gateway.dialects.base.Dialect`."""
