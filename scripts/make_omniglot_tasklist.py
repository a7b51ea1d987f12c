"""Build the classic Omniglot one-shot task list (20-way 1-shot, one query per class,
every task within one alphabet) from images_evaluation.zip, for `tasks.test_tasks`.

    python scripts/make_omniglot_tasklist.py ../shared/omniglot/images_evaluation.zip \
        my_tasks --n-tasks 20 [--way 20] [--alphabet Angelic] [--seed 0]

writes my_tasks/tasks.csv and the images it names under my_tasks/images/.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mnk.tasks.tasklist import parse_task_list, write_omniglot_one_shot_list  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", help="images_evaluation.zip (or another Omniglot archive)")
    parser.add_argument("out_dir", help="folder for tasks.csv and its images")
    parser.add_argument("--n-tasks", type=int, default=20)
    parser.add_argument("--way", type=int, default=20)
    parser.add_argument("--alphabet", default=None, help="one alphabet for every task (default: random per task)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    csv_path = write_omniglot_one_shot_list(args.archive, args.out_dir, n_tasks=args.n_tasks, way=args.way,
                                            alphabet=args.alphabet, seed=args.seed)
    tasks = parse_task_list(csv_path, way=args.way, shot=1)
    print(f"{csv_path}: {tasks.n_tasks} tasks, {tasks.way}-way {tasks.shot}-shot, "
          f"{tasks.query} query per class, {len(tasks.paths)} images, id {tasks.list_id}")


if __name__ == "__main__":
    main()
