"""The tenant's own usage page at ``/account/usage/``: a read-only view for a login linked to
one tenant (a *tenant member*, added in the admin), showing that tenant's figures only.

Log in at ``/account/login/``. Staff users are sent to the operators' dashboard instead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from apps.reporting.dashboard import _range
from apps.reporting.models import TenantMember
from apps.reporting.selectors import usage_grouped, usage_series, usage_totals


def _bars(points: list[tuple[str, float]], *, width: int = 720, height: int = 160):
    """A bar chart of dollars as inline SVG."""
    if not points:
        return mark_safe('<p class="help">No requests in this range.</p>')  # nosec B308  # a constant
    points = [(label, float(value)) for label, value in points]
    top = max(value for _, value in points) or 1.0
    step = width / len(points)
    bars = format_html_join("", '<rect x="{}" y="{}" width="{}" height="{}" fill="#417690">'
                            "<title>{}: {}</title></rect>",
                            ((f"{i * step + 1:.1f}", f"{height - value / top * (height - 20):.1f}",
                              f"{max(step - 2, 1):.1f}", f"{value / top * (height - 20):.1f}", label,
                              f"${value:,.4f}")
                             for i, (label, value) in enumerate(points)))
    return format_html('<svg class="sy-chart" viewBox="0 0 {} {}" width="100%" height="{}" role="img">'
                       '<text x="4" y="12" font-size="11" fill="#666">max {}</text>{}</svg>', width, height, height,
                       f"${top:,.4f}", bars)


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
    totals = usage_totals(tenant_id=tenant.pk, start=start, end=end, period=period)
    series = usage_series(tenant_id=tenant.pk, start=start, end=end, period=period)
    label = "%H:00" if period == "hour" else "%m-%d"
    return render(request, "account/usage.html", {
        "tenant": tenant, "choice": choice, "start": start.date(), "end": (end - timedelta(days=1)).date(),
        "totals": totals, "period": period,
        "spend_chart": _bars([(row["bucket"].strftime(label), float(row["cost"])) for row in series]),
        "by_model": usage_grouped(tenant_id=tenant.pk, start=start, end=end, group_by="model", period=period),
        "by_key": usage_grouped(tenant_id=tenant.pk, start=start, end=end, group_by="key", period=period),
        "keys": dict(tenant.api_keys.values_list("pk", "name")),
    })
