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

  // The probe's context is released at once: a page may hold only 16, and every view needs one.
  const probe = document.createElement("canvas").getContext("webgl2");
  if (!probe) {
    fail("This page needs WebGL2, which this browser does not offer or has switched off.");
    return;
  }
  probe.getExtension("WEBGL_lose_context")?.loseContext();

  try {
    const views = [];
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
      if (panel.grey) {
        image.colormap = "gray";
      }
      nv.addVolume(image);
      nv.setSliceType(nv.sliceTypeMultiplanar);
      views.push({ nv, panel, readout: document.getElementById("value-" + panel.id) });
    }

    const fixed = (x, digits) => Number(x).toFixed(digits);
    // The crosshair in scanner millimetres, through the file's whole affine (not NiiVue's axis-aligned
    // approximation of it), and the file's own voxel indices (i, j, k) of that point.
    const scannerMm = (nv) => Array.from(nv.frac2mm(nv.scene.crosshairPos, 0, true)).slice(0, 3);
    const fileVoxel = (mm) => data.worldToVoxel.map((row) =>
      Math.round(row[0] * mm[0] + row[1] * mm[1] + row[2] * mm[2] + row[3]));

    function report() {
      const mm = scannerMm(views[0].nv);
      const voxel = fileVoxel(mm);
      locationLine.dataset.voxel = voxel.join(",");
      locationLine.dataset.mm = mm.map((x) => fixed(x, 2)).join(",");
      locationLine.textContent = `crosshair at voxel (i, j, k) = (${voxel.join(", ")}) \u00b7 scanner coordinates ` +
        `x = ${fixed(mm[0], 1)} mm (sagittal plane), y = ${fixed(mm[1], 1)} mm (coronal), ` +
        `z = ${fixed(mm[2], 1)} mm (axial)`;
      for (const view of views) {
        const [i, j, k] = fileVoxel(scannerMm(view.nv));
        view.readout.dataset.voxel = [i, j, k].join(",");
        // getValue takes NiiVue's own (RAS-reoriented) voxel indices
        const ras = Array.from(view.nv.frac2vox(view.nv.scene.crosshairPos)).map(Math.round);
        view.readout.textContent = view.panel.grey
          ? `value at (${i}, ${j}, ${k}) \u2248 ${fixed(view.nv.volumes[0].getValue(...ras), 3)}`
          : `voxel (${i}, ${j}, ${k})`;
      }
    }

    // A move calls every view's onLocationChange (the broadcast moves the others synchronously): one report
    // per frame is enough.
    let reportPending = false;
    function scheduleReport() {
      if (!reportPending) {
        reportPending = true;
        requestAnimationFrame(() => {
          reportPending = false;
          report();
        });
      }
    }
    for (const view of views) {
      view.nv.broadcastTo(views.filter((other) => other !== view).map((other) => other.nv), { "2d": true, "3d": true });
      view.nv.onLocationChange = scheduleReport;
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
      voxels: () => views.map((view) => fileVoxel(scannerMm(view.nv))),
      labels: () => views.map((view) => view.panel.label),
    };
    requestAnimationFrame(() => { root.dataset.state = "ready"; });
  } catch (error) {
    fail("The volumes could not be shown: " + error);
  }
})();
