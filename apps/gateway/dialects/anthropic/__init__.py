"""Anthropic's Messages API (``/v1/messages``) as a client dialect of the pipeline.

    dialect    the Dialect: prepare, per-provider requests, answers, streams, errors, replays
    translate  request and answer bodies between Anthropic's shape and the chat form
    sse        an OpenAI chat stream written as Anthropic's SSE events, as bytes
    native     a native Anthropic stream relayed byte for byte, usage read on the way
    errors     the error tree rendered in Anthropic's shape and statuses
"""
