"""The default tiers (DESIGN.md's table). Seeded by migrations; editable in the admin after."""

DEFAULT_TIERS: dict[str, dict[str, int | str]] = {
    # inflight_cap: a customer's messages in the broker or sending at once (fair share); big
    # enough to keep a tier's pool busy with one customer alone, small enough that a quiet
    # customer's wait behind it stays well under a second.
    "free": dict(
        queue="mailq.free",
        pool_weight=1,
        api_rate_per_second=5,
        api_burst=50,
        daily_quota=1_000,
        monthly_quota=10_000,
        inflight_cap=20,
    ),
    "standard": dict(
        queue="mailq.standard",
        pool_weight=2,
        api_rate_per_second=100,
        api_burst=2_000,
        daily_quota=200_000,
        monthly_quota=5_000_000,
        inflight_cap=200,
    ),
    "premium": dict(
        queue="mailq.premium",
        pool_weight=3,
        api_rate_per_second=2_000,
        api_burst=200_000,
        daily_quota=20_000_000,
        monthly_quota=500_000_000,
        inflight_cap=500,
    ),
}
