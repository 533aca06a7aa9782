"""OpenAI's Responses API (``/v1/responses``) as a client dialect of the pipeline.

    dialect    the Dialect: prepare, per-provider requests, answers, streams, errors, replays
    translate  request and answer bodies between the Responses shape and the chat form
    sse        an OpenAI chat stream written as the Responses API's typed SSE events
"""
