"""Database-level overlap guarantees (PostgreSQL only).

A doctor never has two occupying appointments that overlap in time, nor does a patient.
Exclusion constraints need btree_gist for the equality part; SQLite (the embedded demo) has no
equivalent and relies on the per-slot unique constraint plus the service's row locks.
"""

from django.db import migrations

CONSTRAINTS = {
    "appointment_doctor_no_overlap": "doctor_id",
    "appointment_patient_no_overlap": "patient_id",
}


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    for name, column in CONSTRAINTS.items():
        schema_editor.execute(
            f"ALTER TABLE clinics_appointment ADD CONSTRAINT {name} EXCLUDE USING gist "
            f"({column} WITH =, tstzrange(start_at, end_at, '[)') WITH &&) "
            "WHERE (status <> 'cancelled')"
        )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in CONSTRAINTS:
        schema_editor.execute(f"ALTER TABLE clinics_appointment DROP CONSTRAINT IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("clinics", "0001_initial")]

    operations = [migrations.RunPython(create, drop, elidable=False)]
