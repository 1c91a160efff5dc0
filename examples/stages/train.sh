# Example training (mounts the AWS folder at /root/.aws): a few epochs of made-up progress, then a model file in
# /root/.aws/example-models. model.env: EPOCHS (3), STEP_SECONDS (1 per epoch).
run="${BRAIN_RUN_ID:-manual}"
epochs="${EPOCHS:-3}"
echo "train $run: training on $(ls /root/.aws/example-remote/processed 2>/dev/null | wc -l) processed files, $epochs epochs"
loss=100
e=1
while [ "$e" -le "$epochs" ]; do
  sleep "${STEP_SECONDS:-1}"
  loss=$((loss * 6 / 10))
  echo "epoch $e/$epochs loss=0.$(printf %02d "$loss")"
  e=$((e + 1))
done
mkdir -p /root/.aws/example-models || exit 1
echo "model of $run, $epochs epochs" >"/root/.aws/example-models/$run.txt" || exit 1
echo "train $run: model saved to example-models/$run.txt"
