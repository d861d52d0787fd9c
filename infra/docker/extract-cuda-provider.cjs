// Puts onnxruntime-node's CUDA provider files from a local NuGet package (.nupkg, a zip) where its
// install script would, using onnxruntime-node's own manifest (install-metadata.js), so the list of
// files and their paths inside the package are the ones the real download uses.
//
//   node extract-cuda-provider.cjs PACKAGE.nupkg        (run in the folder holding node_modules)
'use strict';
const path = require('node:path');
const fs = require('node:fs');

const nupkg = process.argv[2];
if (!nupkg) {
  console.error('usage: node extract-cuda-provider.cjs PACKAGE.nupkg');
  process.exit(2);
}
const ortRoot = path.dirname(require.resolve('onnxruntime-node/package.json', { paths: [process.cwd()] }));
const requireFromOrt = (id) => require(require.resolve(id, { paths: [ortRoot] }));
const metadata = requireFromOrt(path.join(ortRoot, 'script/install-metadata.js'));
const AdmZip = requireFromOrt('adm-zip');

const manifest = metadata.manifests['linux/x64:cuda12'];
if (!manifest) {
  console.error('extract-cuda-provider: onnxruntime-node has no linux/x64:cuda12 manifest');
  process.exit(1);
}
const zip = new AdmZip(nupkg);
const binFolder = path.join(ortRoot, 'bin/napi-v6/linux/x64');
for (const [filename, { path: pathInPackage }] of Object.entries(manifest)) {
  const entry = zip.getEntry(pathInPackage);
  if (!entry) {
    console.error(`extract-cuda-provider: ${nupkg} has no ${pathInPackage}`);
    process.exit(1);
  }
  fs.writeFileSync(path.join(binFolder, filename), entry.getData());
  console.log(`extract-cuda-provider: ${pathInPackage} -> ${path.join(binFolder, filename)}`);
}
