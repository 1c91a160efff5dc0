# Example DVC load (mounts its folder at /app/collect_point, the AWS folder at /root/.aws). The real one pushes the
# folder to a DVC remote; this one copies it to /root/.aws/example-remote/<processed|viz>. Like the real one, it
# empties the folder after the push. The target comes from the stage's name: load-processed or load-viz.
target="${BRAIN_STAGE#load-}"
remote="/root/.aws/example-remote/$target"
count=$(ls -A /app/collect_point | wc -l)
echo "load $target: pushing $count files"
sleep "${STEP_SECONDS:-1}"
mkdir -p "$remote" || exit 1
cp -r /app/collect_point/. "$remote/" || exit 1
rm -rf /app/collect_point/* || exit 1
echo "load $target: pushed $count files, $(ls "$remote" | wc -l) in the remote; the folder is empty again"
