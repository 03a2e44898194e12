from django.db import migrations

TIERS = [
    # name, pool weight, rate/s, burst, daily, monthly, in-flight cap
    ("free", 1, 5, 50, 1_000, 10_000, 5),
    ("standard", 2, 100, 2_000, 200_000, 5_000_000, 20),
    ("premium", 3, 2_000, 200_000, 20_000_000, 500_000_000, 100),
]


def seed(apps, schema_editor):
    Tier = apps.get_model("customers", "Tier")
    for name, weight, rate, burst, daily, monthly, cap in TIERS:
        Tier.objects.update_or_create(
            name=name,
            defaults={
                "queue": f"mailq.{name}",
                "pool_weight": weight,
                "api_rate_per_second": rate,
                "api_burst": burst,
                "daily_quota": daily,
                "monthly_quota": monthly,
                "inflight_cap": cap,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("customers", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
