"""Circuit breakers are kept per provider and model: each reported circuit names its model.

The rows a process reports live only as long as that process; the per-provider rows left from
before describe breakers that no longer exist, and are removed.
"""

import django.db.models.deletion
from django.db import migrations, models


def circuits_clear(apps, schema_editor):
    apps.get_model("catalog", "ProviderCircuit").objects.all().delete()


class Migration(migrations.Migration):

    dependencies = [
        ('catalog', '0005_model_priced_or_free'),
    ]

    operations = [
        migrations.RunPython(circuits_clear, migrations.RunPython.noop),
        migrations.RemoveConstraint(
            model_name='providercircuit',
            name='provider_circuit_per_process',
        ),
        migrations.AddField(
            model_name='providercircuit',
            name='model',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='circuits',
                                    to='catalog.model'),
            preserve_default=False,
        ),
        migrations.AlterModelOptions(
            name='providercircuit',
            options={'ordering': ['provider', 'model__name', 'process']},
        ),
        migrations.AddConstraint(
            model_name='providercircuit',
            constraint=models.UniqueConstraint(fields=('provider', 'model', 'process'),
                                               name='circuit_per_model_per_process'),
        ),
    ]
