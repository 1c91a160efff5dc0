# Dispatches on the stage the runner names (BRAIN_STAGE), or on the first argument.
case "${BRAIN_STAGE:-$1}" in
  transform) exec sh /stages/transform.sh ;;
  load-processed | load-viz) exec sh /stages/load.sh ;;
  model-trigger) exec sh /stages/model-trigger.sh ;;
  train) exec sh /stages/train.sh ;;
  # The one-shot compose service `examples`: makes the host folders the stages mount (mounted at /data).
  prepare)
    mkdir -p /data/aws /data/processed /data/viz || exit 1
    echo "example data folders ready: aws, processed, viz"
    ;;
  *)
    echo "usage: BRAIN_STAGE=transform|load-processed|load-viz|model-trigger|train, or the argument prepare" >&2
    exit 2
    ;;
esac
