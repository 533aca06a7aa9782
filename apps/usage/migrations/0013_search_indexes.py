
from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # The request log is the biggest table: its indexes are built without locking out writes.
    atomic = False

    dependencies = [
        ('catalog', '0011_model_capabilities'),
        ('routing', '0003_route_estimates_and_priors'),
        ('tenants', '0011_request_bodies'),
        ('usage', '0012_routing_decision'),
    ]

    operations = [
        AddIndexConcurrently(
            model_name='requestlog',
            index=models.Index(condition=models.Q(('end_user', ''), _negated=True), fields=['end_user', 'tenant', '-created_at'], name='request_log_end_user_tenant'),
        ),
        AddIndexConcurrently(
            model_name='requestlog',
            index=models.Index(condition=models.Q(('status_code__gte', 400)), fields=['status_code', '-created_at'], name='request_log_status_error'),
        ),
        AddIndexConcurrently(
            model_name='requestlog',
            index=models.Index(condition=models.Q(('error_code', ''), _negated=True), fields=['error_code', '-created_at'], name='request_log_error_code'),
        ),
        RemoveIndexConcurrently(
            model_name='requestlog',
            name='request_log_end_user',
        ),
    ]
