// Run an original MoveNet TFJS graph model on one raw RGB image and dump
// selected intermediate/final tensors, to serve as golden fixtures for the
// PyTorch port.
//
// Usage: node golden.mjs MODEL_JSON INPUT_RAW OUTPUT_DIR SIZE [KIND]
//   MODEL_JSON  graph-model model.json (weight shards resolved next to it)
//   INPUT_RAW   SIZE*SIZE*3 uint8 bytes, RGB, row-major ([1,SIZE,SIZE,3])
//   OUTPUT_DIR  receives <short>.f32 (raw little-endian float32) + outputs.json
//   SIZE        network input size (256 for Thunder and MultiPose, 192 for Lightning)
//   KIND        singlepose (default) or multipose: which nodes to dump
//
// Only the pure-JS CPU backend is used (no tfjs-node / native kernels) so the
// numbers come from the reference kernels and are reproducible anywhere.

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { endianness } from 'node:os';
import { dirname, join } from 'node:path';

import * as tf from '@tensorflow/tfjs-core';
import { version_cpu } from '@tensorflow/tfjs-backend-cpu';
import { loadGraphModel, version_converter } from '@tensorflow/tfjs-converter';

// Node name in the graph -> short name used for the dumped file, per kind of model.
const FETCHES = {
  singlepose: {
    'StatefulPartitionedCall/Sigmoid': 'heatmap',
    'StatefulPartitionedCall/kpt_heatmap_0/conv2d_5/BiasAdd': 'heatmap_logits',
    'StatefulPartitionedCall/Sigmoid_1': 'center',
    'StatefulPartitionedCall/kpt_regress_0/conv2d_6/BiasAdd': 'regress',
    'StatefulPartitionedCall/kpt_offset_0/conv2d_7/BiasAdd': 'offset',
    Identity: 'keypoints',
  },
  // MultiPose numbers its nodes differently: here Sigmoid is the centre map.
  multipose: {
    'StatefulPartitionedCall/Sigmoid': 'center',
    'StatefulPartitionedCall/Sigmoid_1': 'heatmap',
    'StatefulPartitionedCall/kpt_heatmap_0/conv2d_7/BiasAdd': 'heatmap_logits',
    'StatefulPartitionedCall/box_scale_0/conv2d_5/BiasAdd': 'box_scale',
    'StatefulPartitionedCall/box_offset_0/conv2d_6/BiasAdd': 'box_offset',
    'StatefulPartitionedCall/kpt_regress_0/conv2d_8/BiasAdd': 'regress',
    'StatefulPartitionedCall/kpt_offset_0/conv2d_9/BiasAdd': 'offset',
    // The decode's discrete choices (int32, dumped as exact float32): the flat index of each
    // person's centre cell (top-k, best first) and of each (person, joint)'s chosen cell.
    'StatefulPartitionedCall/TopKV2:1': 'centre_index',
    'StatefulPartitionedCall/ArgMax': 'keypoint_index',
    Identity: 'detections',
  },
};

// Minimal file-system IOHandler: tfjs-converter's loadGraphModel only knows
// URLs in Node, so hand it the parsed model.json plus concatenated weights.
function fileHandler(modelJsonPath) {
  return {
    async load() {
      const modelJson = JSON.parse(readFileSync(modelJsonPath, 'utf8'));
      const dir = dirname(modelJsonPath);
      const weightSpecs = [];
      const buffers = [];
      for (const group of modelJson.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const p of group.paths) buffers.push(readFileSync(join(dir, p)));
      }
      const all = Buffer.concat(buffers);
      return {
        modelTopology: modelJson.modelTopology,
        format: modelJson.format,
        generatedBy: modelJson.generatedBy,
        convertedBy: modelJson.convertedBy,
        signature: modelJson.signature,
        userDefinedMetadata: modelJson.userDefinedMetadata,
        weightSpecs,
        // Copy into a standalone ArrayBuffer (Buffers may share a pool).
        weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength),
      };
    },
  };
}

async function main() {
  const [modelJsonPath, inputPath, outDir, sizeArg, kind = 'singlepose'] = process.argv.slice(2);
  if (!modelJsonPath || !inputPath || !outDir || !sizeArg || !(kind in FETCHES)) {
    console.error('usage: node golden.mjs MODEL_JSON INPUT_RAW OUTPUT_DIR SIZE [singlepose|multipose]');
    process.exit(2);
  }
  const fetches = FETCHES[kind];
  // Raw dumps are written in native order; fixtures promise little-endian.
  if (endianness() !== 'LE') throw new Error('big-endian host not supported');
  const size = Number.parseInt(sizeArg, 10);

  await tf.setBackend('cpu');
  await tf.ready();

  const raw = readFileSync(inputPath);
  if (raw.length !== size * size * 3) {
    throw new Error(`input has ${raw.length} bytes, expected ${size * size * 3}`);
  }
  const model = await loadGraphModel(fileHandler(modelJsonPath));
  // The graph's Placeholder is int32 [1,S,S,3] holding 0..255 pixel values.
  const input = tf.tensor4d(Int32Array.from(raw), [1, size, size, 3], 'int32');

  const names = Object.keys(fetches);
  const outputs = model.execute(input, names);

  mkdirSync(outDir, { recursive: true });
  const meta = {
    backend: tf.getBackend(),
    versions: {
      'tfjs-core': tf.version_core,
      'tfjs-converter': version_converter,
      'tfjs-backend-cpu': version_cpu,
    },
    model: modelJsonPath,
    size,
    outputs: {},
  };
  names.forEach((name, i) => {
    const t = outputs[i];
    const data = Float32Array.from(t.dataSync());
    writeFileSync(join(outDir, `${fetches[name]}.f32`), Buffer.from(data.buffer));
    meta.outputs[fetches[name]] = { node: name, shape: t.shape, dtype: t.dtype };
  });
  writeFileSync(join(outDir, 'outputs.json'), `${JSON.stringify(meta, null, 2)}\n`);
  tf.dispose([input, ...outputs]);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
