"""Anthropic's Messages API (``/v1/messages``) as a second door into the gateway's pipeline.

    door       the ASGI handler: auth, cache, answer, Anthropic-shaped errors
    flow       prepare / answer through the shared pipeline, per provider kind
    translate  request and answer bodies between Anthropic's shape and the chat form
    sse        an OpenAI chat stream written as Anthropic's SSE events, as bytes
    native     a native Anthropic stream relayed byte for byte, usage read on the way
    errors     the error tree rendered in Anthropic's shape and statuses
"""
