"""The conductor: herd's workflows, from the build manager to one task object per move.

As in Nova, the conductor is where a request becomes steps on hosts: ``manager`` schedules,
claims, casts and reschedules builds; ``tasks/`` holds one object per workflow whose
``execute()`` reads as its steps. This package imports nothing itself, so a command that needs
only one of its modules pays for that one.
"""
