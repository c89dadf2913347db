// The viewer page's own script (lpmnet.evaluation.viewer): one NiiVue instance per view, every view's
// crosshair broadcast to all others, one window shared by the grey views, the crosshair's position reported.
// window.lpmnetViewer lets a test (or a user's console) read where every view is.
(async function () {
  "use strict";
  const root = document.documentElement;
  const data = JSON.parse(document.getElementById("viewer-data").textContent);
  const locationLine = document.getElementById("location");

  function fail(message) {
    root.dataset.state = "error";
    locationLine.textContent = message;
    console.error(message);
  }

  if (!document.createElement("canvas").getContext("webgl2")) {
    fail("This page needs WebGL2, which this browser does not offer or has switched off.");
    return;
  }

  const views = [];
  try {
    for (const panel of data.panels) {
      const nv = new niivue.Niivue({
        backColor: [0, 0, 0, 1],
        crosshairColor: [0.25, 0.85, 1, 0.9],
        show3Dcrosshair: false,
        isColorbar: false,
        isOrientCube: false,
        dragAndDropEnabled: false,
        isRadiologicalConvention: false,
        multiplanarShowRender: niivue.SHOW_RENDER.NEVER,
        multiplanarLayout: niivue.MULTIPLANAR_TYPE.ROW,
        logLevel: "error",
      });
      await nv.attachToCanvas(document.getElementById(panel.id));
      const image = await niivue.NVImage.loadFromBase64({ base64: panel.nifti, name: panel.id + ".nii.gz" });
      nv.addVolume(image);
      if (panel.grey) {
        image.colormap = "gray";
        image.cal_min = data.window[0];
        image.cal_max = data.window[1];
        nv.updateGLVolume();
      }
      nv.setSliceType(nv.sliceTypeMultiplanar);
      views.push({ nv, panel, readout: document.getElementById("value-" + panel.id) });
    }
  } catch (error) {
    fail("The volumes could not be shown: " + error);
    return;
  }

  const voxelOf = (nv) => Array.from(nv.frac2vox(nv.scene.crosshairPos)).map(Math.round);
  const fixed = (x, digits) => Number(x).toFixed(digits);

  function report() {
    const nv = views[0].nv;
    const voxel = voxelOf(nv);
    const mm = Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3);
    locationLine.dataset.voxel = voxel.join(",");
    locationLine.dataset.mm = mm.map((x) => fixed(x, 2)).join(",");
    locationLine.textContent = `crosshair at voxel (i, j, k) = (${voxel.join(", ")}) \u00b7 scanner coordinates ` +
      `x = ${fixed(mm[0], 1)} mm (sagittal plane), y = ${fixed(mm[1], 1)} mm (coronal), ` +
      `z = ${fixed(mm[2], 1)} mm (axial)`;
    for (const view of views) {
      const [i, j, k] = voxelOf(view.nv);
      view.readout.dataset.voxel = [i, j, k].join(",");
      view.readout.textContent = view.panel.grey
        ? `value at (${i}, ${j}, ${k}): ${fixed(view.nv.volumes[0].getValue(i, j, k), 4)}`
        : `voxel (${i}, ${j}, ${k})`;
    }
  }

  for (const view of views) {
    view.nv.broadcastTo(views.filter((other) => other !== view).map((other) => other.nv), { "2d": true, "3d": true });
    // The broadcast moves the other views while this one draws; report once they have.
    view.nv.onLocationChange = () => requestAnimationFrame(report);
  }

  const low = document.getElementById("window-low");
  const high = document.getElementById("window-high");
  const windowText = document.getElementById("window-text");
  function applyWindow() {
    const lo = Math.min(Number(low.value), Number(high.value) - data.step);
    const hi = Math.max(Number(high.value), lo + data.step);
    for (const view of views.filter((v) => v.panel.grey)) {
      view.nv.volumes[0].cal_min = lo;
      view.nv.volumes[0].cal_max = hi;
      view.nv.updateGLVolume();
    }
    windowText.textContent = `grey window ${fixed(lo, 3)} to ${fixed(hi, 3)}`;
  }
  low.addEventListener("input", applyWindow);
  high.addEventListener("input", applyWindow);
  document.getElementById("recentre").addEventListener("click", () => {
    for (const view of views) {
      view.nv.scene.crosshairPos = [0.5, 0.5, 0.5];
      view.nv.drawScene();
    }
    report();
  });

  applyWindow();
  report();
  window.lpmnetViewer = {
    voxels: () => views.map((view) => voxelOf(view.nv)),
    labels: () => views.map((view) => view.panel.label),
  };
  requestAnimationFrame(() => { root.dataset.state = "ready"; });
})();
