# Example drift gate (mounts nothing). The real one compares the dataset's DVC commit with master; this one has no
# dataset to look at: it runs after a load of new data (or a trigger by hand), so it reports the difference the
# model-gate service looks for. model_trigger.env: MISMATCH=0 to report an up-to-date model instead.
echo "gate ${BRAIN_RUN_ID:-manual}: comparing the dataset commit with master"
sleep "${STEP_SECONDS:-1}"
if [ "${MISMATCH:-1}" = "0" ]; then
  echo "gate: file counts match; the model is up to date"
else
  echo "File counts differ between the dataset commit and master."
fi
