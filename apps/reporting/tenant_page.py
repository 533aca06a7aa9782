"""The tenant's own usage page at ``/account/usage/``: a read-only view for a login linked to
one tenant (a *tenant member*, added in the admin), showing that tenant's figures only.

Log in at ``/account/login/``. Staff users are sent to the operators' dashboard instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from apps.reporting.charts import chart_data
from apps.reporting.dashboard import _link_rows, _range, _tag_rows, figures, filter_links, usage_filter
from apps.reporting.models import TenantMember
from apps.reporting.selectors import attribution_grouped, usage_grouped


@login_required(login_url="/account/login/")
def tenant_usage(request):
    membership = TenantMember.objects.select_related("tenant").filter(user=request.user).first()
    if membership is None:
        if request.user.is_staff:
            return redirect("dashboard")
        return render(request, "account/no_tenant.html", status=403)
    tenant = membership.tenant
    choice, start, end = _range(request.GET, datetime.now(UTC))
    period = "hour" if end - start <= timedelta(days=2) else "day"
    # The filter is read against this tenant's rows only: a user or tag of another tenant finds nothing.
    narrow = usage_filter(request.GET)
    params = {name: request.GET[name] for name in ("range", "start", "end") if request.GET.get(name)}
    links = filter_links(params, narrow)
    totals, series = figures(tenant_id=tenant.pk, start=start, end=end, period=period, narrow=narrow)
    return render(request, "account/usage.html", {
        "narrow": narrow, "clear_link": links["clear"],
        "by_user": _link_rows(attribution_grouped(tenant_id=tenant.pk, start=start, end=end, group_by="user")[:20],
                              links["user_base"], "user"),
        "by_tags": _tag_rows(attribution_grouped(tenant_id=tenant.pk, start=start, end=end, group_by="tags")[:20],
                             links["tag_base"]),
        "tenant": tenant, "choice": choice, "start": start.date(), "end": (end - timedelta(days=1)).date(),
        "totals": totals, "period": period,
        "charts": chart_data(series, start=start, end=end, period=period),
        "by_model": usage_grouped(tenant_id=tenant.pk, start=start, end=end, group_by="model", period=period),
        "by_key": usage_grouped(tenant_id=tenant.pk, start=start, end=end, group_by="key", period=period),
        "keys": dict(tenant.api_keys.values_list("pk", "name")),
    })
