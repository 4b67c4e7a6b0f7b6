"""The recipe tasks as one table (ocellus/train/tasks/, the shared checks in train/recipe.py::check_recipe, the
post-training loop run.run_method and its model card), guarded by tests/unit/test_tasks_table.py and the recipe
tests."""
from mutations import Mutation

TABLE = "tests/unit/test_tasks_table.py"
FIRST_USE = "tests/unit/test_first_use_errors.py"

MUTATIONS = [
    Mutation(name="tasks: an unknown task is looked up instead of refused", file="ocellus/train/tasks/__init__.py",
             old="    if name not in TASKS:", new="    if False:",
             tests=[f"{TABLE}::test_an_unknown_task_is_refused_naming_every_known_one"]),
    Mutation(name="tasks: load_recipe returns the recipe unvalidated", file="ocellus/train/tasks/__init__.py",
             old="    validate(recipe, where=str(path))\n", new="", tests=[TABLE, "tests/unit/test_recipe_schema.py"]),
    Mutation(name="tasks: check_sources looks only at the own-schema runners", file="ocellus/train/tasks/__init__.py",
             old='    if shared_schema(recipe["task"]):', new='    if not shared_schema(recipe["task"]):',
             tests=[f"{FIRST_USE}::test_sft_before_align_names_the_recipe_to_run_first"]),
    Mutation(name="tasks: ocellus train reads the recipe without its task's checks", file="ocellus/cli.py",
             old="    recipe = load_recipe(args.recipe, args.overrides)",
             new="    recipe = __import__('ocellus.train.recipe', fromlist=['_']).read_recipe(args.recipe, args.overrides)",
             tests=[f"{TABLE}::test_the_cli_and_recipe_validation_accept_exactly_the_table"]),
    Mutation(name="tasks: a post-training export keeps no model card of its recipe", file="ocellus/train/run.py",
             old="    write_model_card(path, recipe, Tokenizer.from_dir(path))\n", new="",
             tests=[f"{TABLE}::test_a_post_training_run_gets_its_recipe_and_the_recipes_model_card"]),
    Mutation(name="tasks: a post-training method runs unseeded", file="ocellus/train/run.py",
             old='    torch.manual_seed(int(recipe.get("seed", 0)))\n    (out / "recipe.json")',
             new='    (out / "recipe.json")',
             tests=[f"{TABLE}::test_a_post_training_run_gets_its_recipe_and_the_recipes_model_card"]),
    Mutation(name="tasks: a post-training model card calls the VLM a text model", file="ocellus/hub/model_card.py",
             old='IMAGE_TEXT_TASKS = ("vlm", "dpo", "grpo", "ppo", "distill", "rm")', new='IMAGE_TEXT_TASKS = ("vlm",)',
             tests=[f"{TABLE}::test_a_post_training_run_gets_its_recipe_and_the_recipes_model_card"]),
    Mutation(name="tasks: a task may name stage parts it does not have", file="ocellus/train/recipe.py",
             old="    if stage is not None and parts is not None and set(stage.parts) - set(parts):",
             new="    if False:", tests=[f"{TABLE}::test_each_task_validates_by_its_own_rules"]),
    Mutation(name="tasks: every task's stage restricted to llm / vision", file="ocellus/train/recipe.py",
             old="    if stage is not None and parts is not None and set(stage.parts) - set(parts):",
             new='    if stage is not None and set(stage.parts) - set(parts or ("llm", "vision")):',
             tests=[f"{TABLE}::test_what_a_task_allows_validates"]),
    Mutation(name="tasks: an image task trains on text data", file="ocellus/train/recipe.py",
             old='    if data == "image" and SOURCES[source] != "image":', new="    if False:",
             tests=[f"{TABLE}::test_each_task_validates_by_its_own_rules"]),
    Mutation(name="tasks: a post-training recipe without model.from validates", file="ocellus/train/recipe.py",
             old='        if "from" not in (recipe.get("model") or {}):', new="        if False:",
             tests=["tests/unit/test_posttrain_recipes.py::test_bad_posttrain_recipes", TABLE]),
    Mutation(name="tasks: vlm lets a frozen-everything stage through", file="ocellus/train/tasks/vlm.py",
             old='        bad("train.stage freezes every part: nothing would train")', new="        pass",
             tests=[f"{TABLE}::test_each_task_validates_by_its_own_rules"]),
    Mutation(name="tasks: moco builds a text tokenizer it has no use for", file="ocellus/train/tasks/contrastive.py",
             old='    return None if recipe["task"] == "moco" else shared.build_tokenizer(recipe, out)',
             new="    return shared.build_tokenizer(recipe, out)",
             tests=["tests/unit/test_contrastive_recipes.py::test_moco_recipe_trains_and_probes"]),
]
