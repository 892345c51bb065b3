#!/bin/sh
# A worker for `mesh-cli run --service thumbnail --exec examples/make-thumbnail.sh`.
#
# The task's body comes on stdin, e.g. {"image": "cat.png"}; the exit status acks (0) or nacks
# (anything else) it. A task can be delivered more than once (its first worker failed or was
# lost), so the work is idempotent: it is recorded in thumbnails/SENDER-ID.done, named after the
# task (MESH_TASK_SENDER and MESH_TASK_ID), and a task already recorded is acked at once.
set -eu

out=thumbnails
mkdir -p "$out"
done_file="$out/$MESH_TASK_SENDER-$MESH_TASK_ID.done"
if [ -e "$done_file" ]; then
    echo "task $MESH_TASK_ID: already done (attempt $MESH_TASK_ATTEMPT)"
    exit 0
fi

body=$(cat)
image=$(printf '%s\n' "$body" | sed -n 's/.*"image" *: *"\([^"]*\)".*/\1/p')
if [ -z "$image" ]; then
    echo "no image in $body" >&2
    exit 2 # nacked: the sender sees this line as the reason
fi

# The thumbnail itself, where the image and ImageMagick are here; the record either way.
if [ -f "$image" ] && command -v magick >/dev/null 2>&1; then
    magick "$image" -thumbnail 128x128 "$out/$(basename "$image")"
fi
printf '%s\n' "$body" >"$done_file.tmp"
mv "$done_file.tmp" "$done_file" # all or nothing: a killed worker leaves no record
echo "task $MESH_TASK_ID: thumbnail of $image (attempt $MESH_TASK_ATTEMPT)"
