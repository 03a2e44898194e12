"""Hot-path SQL in one round trip and without the ORM's query compilation.

Compiling a small ORM query costs ~1 ms of CPU here, more than PostgreSQL takes to answer it;
the two lookups every send makes (API key, template) and the insert of its message use these
helpers instead. The SQL is written from each model's own metadata, so it follows migrations.
"""

from django.db import DEFAULT_DB_ALIAS, connection, connections, models


def columns(model: type[models.Model], alias: str) -> str:
    """`alias.col, ...` for every concrete field of `model`, in the order `build` reads them."""
    return ", ".join(f'{alias}."{f.column}"' for f in model._meta.concrete_fields)


def build(model: type[models.Model], row: tuple, start: int) -> tuple[models.Model, int]:
    """The instance whose columns start at `row[start]`, and the index after them."""
    fields = model._meta.concrete_fields
    names = [f.attname for f in fields]
    values = row[start : start + len(fields)]
    converted = []
    for field, value in zip(fields, values, strict=True):
        for converter in field.get_db_converters(connection):
            value = converter(value, field, connection)
        converted.append(value)
    return model.from_db(connection.alias, names, converted), start + len(fields)


def fetch_one(sql: str, params: list) -> tuple | None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def insert(objs: list[models.Model], *also: tuple[str, list]) -> None:
    """INSERT unsaved instances of one model in one multi-row statement, every concrete field
    given (primary keys and defaults are set on the instances already: no RETURNING).

    `also` are more data-modifying statements, as (SQL, params), run as CTEs of the same
    statement: outside a transaction, one round trip commits them all (no BEGIN, no COMMIT),
    and they commit or fail together.
    """
    model = type(objs[0])
    fields = [(f.attname, f.get_db_prep_save) for f in model._meta.concrete_fields]
    names = ", ".join(f'"{f.column}"' for f in model._meta.concrete_fields)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    db = connections[DEFAULT_DB_ALIAS]  # this thread's wrapper: the proxy costs a lookup a use
    with db.cursor() as cursor:
        mogrify = cursor.cursor.mogrify
        values = ",".join(
            mogrify(row, [prep(getattr(o, name), db) for name, prep in fields]).decode()
            for o in objs
        )
        ctes = ", ".join(
            f"also{i} AS ({mogrify(sql, params).decode()})" for i, (sql, params) in enumerate(also)
        )
        cursor.execute(
            (f"WITH {ctes} " if ctes else "")
            + f'INSERT INTO "{model._meta.db_table}" ({names}) VALUES {values}'
        )
    for obj in objs:
        obj._state.adding, obj._state.db = False, db.alias
