"""Anthropic's Messages API (``/v1/messages``) as a client dialect of the pipeline, and native
Anthropic providers as the OpenAI dialects reach them.

    dialect    the Dialect: prepare, per-provider requests, answers, streams, errors, replays
    translate  request and answer bodies between Anthropic's shape and the chat form
    sse        an OpenAI chat stream written as Anthropic's SSE events, as bytes
    native     a native Anthropic stream relayed byte for byte, usage read on the way
    errors     the error tree rendered in Anthropic's shape and statuses
    from_chat  the chat form as a Messages request for a native provider, its answers and
               refusals read back as chat (for ``/v1/chat/completions`` and the doors on it)
    chat_sse   a native Anthropic stream written as OpenAI chat chunks, as bytes
"""
