"""Small files shaped like each MIMIC-IT family's published annotations, written by the tests themselves."""
import json


def _w(path, obj, jsonl=False):
    path.write_text("".join(json.dumps(r) + "\n" for r in obj) if jsonl else json.dumps(obj))
    return path


def coco_captions(d):
    return _w(d / "captions_train2017.json", {
        "info": {}, "licenses": [],
        "images": [{"id": 377944, "file_name": "000000377944.jpg", "width": 640, "height": 480},
                   {"id": 9, "file_name": "000000000009.jpg", "width": 640, "height": 480}],
        "annotations": [{"id": 1, "image_id": 377944, "caption": "A dog sleeps on a red couch."},
                        {"id": 2, "image_id": 377944, "caption": "A brown dog resting on a sofa. "},
                        {"id": 3, "image_id": 9, "caption": "A bowl of fruit on a table."}]})


def coco_instances(d):
    return _w(d / "instances_train2017.json", {
        "images": [{"id": 377944, "file_name": "000000377944.jpg"}, {"id": 9, "file_name": "000000000009.jpg"}],
        "categories": [{"id": 18, "name": "dog", "supercategory": "animal"},
                       {"id": 63, "name": "couch", "supercategory": "furniture"}],
        "annotations": [{"id": 10, "image_id": 377944, "category_id": 18, "bbox": [100.5, 80.0, 200.0, 150.25],
                         "area": 1.0, "iscrowd": 0},
                        {"id": 11, "image_id": 377944, "category_id": 63, "bbox": [0, 50, 640, 400],
                         "area": 1.0, "iscrowd": 0}]})


def llava(d):
    return _w(d / "llava_instruct_150k.json", [
        {"id": "000000377944", "image": "000000377944.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat animal is on the couch?"},
            {"from": "gpt", "value": "A dog is sleeping on the couch."}]},
        {"id": "000000000009", "image": "000000000009.jpg", "conversations": [
            {"from": "human", "value": "What is in the bowl?\n<image>"},
            {"from": "gpt", "value": "Fruit: oranges and apples."}]}])


def spot_the_diff(d):
    return _w(d / "train.json", [
        {"img_id": "1", "sentences": ["the blue truck is gone", "a person walks on the sidewalk"]},
        {"img_id": "22", "sentences": ["the gate is open "]}])


def coco_pairs(d):
    return _w(d / "pairs.json", [[377944, 9]])


def scanrefer(d):
    return _w(d / "ScanRefer_filtered_train.json", [
        {"scene_id": "scene0000_00", "object_id": "5", "object_name": "office_chair", "ann_id": "0",
         "description": "the black chair is next to the desk."},
        {"scene_id": "scene0000_00", "object_id": "7", "object_name": "desk", "ann_id": "0",
         "description": "a wooden desk under the window."},
        {"scene_id": "scene0001_00", "object_id": "1", "object_name": "bed", "ann_id": "0",
         "description": "a bed with white sheets."}])


def scannet_aggregation(d):
    return _w(d / "scene0000_00.aggregation.json", {
        "sceneId": "scannet.scene0000_00", "appId": "Aggregator.v2",
        "segGroups": [{"id": 0, "objectId": 0, "label": "chair", "segments": [1]},
                      {"id": 1, "objectId": 1, "label": "chair", "segments": [2]},
                      {"id": 2, "objectId": 2, "label": "window", "segments": [3]}]})


def vist(d):
    return _w(d / "train.story-in-sequence.json", {
        "info": {}, "type": "sis",
        "albums": [{"id": "72157", "title": "Beach day", "description": "", "photos": "2"}],
        "images": [{"id": "101", "title": "sand castle", "tags": "beach sand kids", "album_id": "72157"},
                   {"id": "102", "title": "sunset", "tags": "sky", "album_id": "72157"}],
        "annotations": [
            [{"album_id": "72157", "photo_flickr_id": "102", "story_id": "30355", "worker_arranged_photo_order": 1,
              "text": "the day ended with a sunset .", "original_text": "The day ended with a sunset.", "tier": "sis"}],
            [{"album_id": "72157", "photo_flickr_id": "101", "story_id": "30355", "worker_arranged_photo_order": 0,
              "text": "we built a castle .", "original_text": "We built a castle.", "tier": "sis"}]]})


def activitynet(d):
    return _w(d / "train.json", {
        "v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": [[0.83, 19.86], [17.37, 60.81]],
                          "sentences": ["A young woman is seen standing in a room.", " She then begins to dance."]},
        "v_ehGHCYKzyZ8": {"duration": 61.72, "timestamps": [[0, 10.2]], "sentences": ["A man mows the lawn."]}})


def tvcaption(d):
    return _w(d / "tvc_train_release.jsonl", [
        {"clip_id": 1, "vid_name": "s01e01_seg02_clip_00", "duration": 61.5, "ts": [20.0, 25.5],
         "descs": [{"desc_id": 1, "desc": "Leonard opens the door.", "type": "v"}]},
        {"clip_id": 2, "vid_name": "s01e01_seg02_clip_00", "duration": 61.5, "ts": [3.0, 8.0],
         "descs": [{"desc_id": 2, "desc": "Sheldon sits on the couch.", "type": "v"},
                   {"desc_id": 3, "desc": "Sheldon points at the board.", "type": "v"}]},
        {"clip_id": 3, "vid_name": "friends_s01e02_seg01_clip_03", "duration": 30.0, "ts": [1.0, 4.0],
         "descs": [{"desc_id": 4, "desc": "Rachel drinks coffee.", "type": "v"}]}], jsonl=True)


def ego4d(d):
    return _w(d / "narration.json", {
        "0a1b2c3d-uid": {
            "narration_pass_1": {
                "narrations": [{"timestamp_sec": 2.5, "timestamp_frame": 75, "narration_text": "#C C picks a knife",
                                "annotation_uid": "a"},
                               {"timestamp_sec": 4.0, "timestamp_frame": 120,
                                "narration_text": "#C C cuts the bread", "annotation_uid": "b"},
                               {"timestamp_sec": 40.0, "timestamp_frame": 1200,
                                "narration_text": "#C C washes a plate", "annotation_uid": "c"}],
                "summaries": [{"summary_text": "#summary C makes a sandwich", "start_sec": 0.0, "end_sec": 20.0},
                              {"summary_text": "#summary C cleans up", "start_sec": 20.0, "end_sec": 60.0}]},
            "status": "complete"}})


# task code -> (writers of the files of one run, expected first record id, expected image ids of it)
FAMILIES = {
    "LA": ((coco_captions, coco_instances, llava), "000000377944", ["LA_IMG_000000377944"]),
    "SD": ((spot_the_diff,), "1", ["SD_IMG_1", "SD_IMG_1_2"]),
    "CGD": ((coco_captions, coco_pairs), "000000377944_000000000009",
            ["CGD_IMG_000000377944", "CGD_IMG_000000000009"]),
    "SN": ((scanrefer, scannet_aggregation), "scene0000_00", [f"SN_IMG_scene0000_00_{k:04d}" for k in range(8)]),
    "VST": ((vist,), "30355", ["VST_IMG_101", "VST_IMG_102"]),
    "DC": ((activitynet,), "v_QOlSCBRmfWY", [f"DC_IMG_v_QOlSCBRmfWY_{k:04d}" for k in range(8)]),
    "TVC": ((tvcaption,), "s01e01_seg02_clip_00", [f"TVC_IMG_s01e01_seg02_clip_00_{k:04d}" for k in range(8)]),
    "E4D": ((ego4d,), "0a1b2c3d-uid_000", [f"E4D_IMG_0a1b2c3d-uid_000_{k:04d}" for k in range(8)]),
}
