"""One task object per workflow, as Nova's ``conductor/tasks``: ``execute()`` reads as the
list of its steps, ``rollback()`` undoes them. Tasks share steps by composing
``conductor.steps.Steps``, never by inheriting from one another."""
