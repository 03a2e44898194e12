from django.db import migrations

from customers.seed import DEFAULT_TIERS


def set_caps(apps, schema_editor):
    Tier = apps.get_model("customers", "Tier")
    for name, values in DEFAULT_TIERS.items():
        Tier.objects.filter(name=name).update(inflight_cap=values["inflight_cap"])


class Migration(migrations.Migration):
    dependencies = [("customers", "0003_fair_share")]
    operations = [migrations.RunPython(set_caps, migrations.RunPython.noop)]
