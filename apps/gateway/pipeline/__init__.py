"""The one request pipeline (:mod:`.run`) and its steps, each in a module of its own:

    call      the request's record (:class:`~.call.Call`) and its usage row
    route     the requested model to the chain of models to try
    limits    reserve and settle rate limits and budgets
    cache     plan, look up, share in-flight answers, save
    upstream  the chain with retries, breakers and fallbacks
    stream    a started stream, relayed and read for usage
    usage     the end of every request: one row, limits settled
"""
