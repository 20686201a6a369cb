"""reasoner.pipeline: decomposed, checked solving (LangGraph), behind the Python API's Reasoner.

The rule. At solve time the pipeline uses only what a user has:
- the problem's text;
- the examples the problem itself shows (a code problem's `f(2) == 5`);
- tools applied to what the model wrote: the calculator on an expression the model wrote (a plan step),
  the sandbox running the model's program on the shown examples, the countdown certificate checker on a
  proposed expression against the numbers and target the question states.
It never uses a gold answer, hidden tests, or an evaluation of the user's own question. `reference=` is
checked only when the caller has one and passes it; no benchmark, demo or test of a gain passes it. Gold
answers and hidden tests live in reasoner.evaluation.grading alone, and what a solver receives (a
`Question`) has no field for either.

graph.py (nodes, edges; the run's declared input and output), plans.py (plan format), checks.py (verdicts,
under the rule above), options.py (solve options), recording.py (the trace). The model behind it is a
reasoner.serving backend; its prompts are reasoner.prompts, in the style that model reads; the tasks' own
reference plans are in reasoner.tasks. Nothing heavy is imported here.
"""
