# Example transform (mounts /app/processed, /app/viz, /app/.aws). The real one reads from S3; this one makes up a
# batch of sensor readings, writes it as CSV into the processed folder and a small chart into the viz folder, and
# prints the phrase the transformer looks for. transform.env: NEW_DATA=0 for a run without new data; STEP_SECONDS.
run="${BRAIN_RUN_ID:-manual}"
pace="${STEP_SECONDS:-1}"
echo "transform $run: fetching the latest batch"
sleep "$pace"
if [ "${NEW_DATA:-1}" = "0" ]; then
  echo "No new data found"
  exit 0
fi
now=$(date +%s)
rows=$((now % 20 + 5))
{
  echo "time,sensor,value"
  i=1
  while [ "$i" -le "$rows" ]; do
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ),s$((i % 3)),$(((i * 37 + now) % 100))"
    i=$((i + 1))
  done
} >"/app/processed/$run.csv" || exit 1
echo "transform $run: wrote $rows rows to processed/$run.csv"
echo "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"200\" height=\"100\"><rect width=\"$((rows * 8))\" height=\"100\" fill=\"steelblue\"/></svg>" >"/app/viz/$run.svg" || exit 1
echo "transform $run: drew viz/$run.svg"
sleep "$pace"
echo "New data was transformed"
