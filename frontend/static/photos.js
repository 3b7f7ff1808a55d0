// pollinid — photos in the browser: read the EXIF date and GPS, and shrink very large photos before upload.
// Large photos are resized to MAX_SIDE pixels on their longer side: plenty for identification (the model
// sees 224 px), and a 12-MP phone photo becomes a few hundred KB. The EXIF date and position are read
// from the original first and sent as form fields, since re-encoding drops EXIF.

export const MAX_SIDE = 2048;
export const RESIZE_ABOVE_BYTES = 1.5 * 1024 * 1024;

function readAscii(view, offset, length) {
  let out = "";
  for (let i = 0; i < length; i++) {
    const c = view.getUint8(offset + i);
    if (c === 0) break;
    out += String.fromCharCode(c);
  }
  return out;
}

function readIfd(view, tiff, offset, little) {
  const entries = {};
  const count = view.getUint16(offset, little);
  for (let i = 0; i < count; i++) {
    const entry = offset + 2 + i * 12;
    const tag = view.getUint16(entry, little);
    const type = view.getUint16(entry + 2, little);
    const n = view.getUint32(entry + 4, little);
    const sizes = { 1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 10: 8 };
    const size = (sizes[type] || 1) * n;
    const valueOffset = size > 4 ? tiff + view.getUint32(entry + 8, little) : entry + 8;
    if (valueOffset + size > view.byteLength) continue;
    if (type === 2) entries[tag] = readAscii(view, valueOffset, n);
    else if (type === 3) entries[tag] = view.getUint16(valueOffset, little);
    else if (type === 4) entries[tag] = view.getUint32(valueOffset, little);
    else if (type === 5 || type === 10) {
      const values = [];
      for (let k = 0; k < n; k++) {
        const num = view.getUint32(valueOffset + k * 8, little);
        const den = view.getUint32(valueOffset + k * 8 + 4, little);
        values.push(den ? num / den : 0);
      }
      entries[tag] = values;
    } else if (type === 1 || type === 7) entries[tag] = view.getUint8(valueOffset);
  }
  return entries;
}

/** Parse DateTimeOriginal and GPS from a JPEG's APP1 EXIF block. Returns {} when absent or unreadable. */
export function parseExif(buffer) {
  try {
    const view = new DataView(buffer);
    if (view.getUint16(0) !== 0xffd8) return {};
    let offset = 2;
    while (offset + 4 < view.byteLength) {
      const marker = view.getUint16(offset);
      const length = view.getUint16(offset + 2);
      if (marker === 0xffe1 && readAscii(view, offset + 4, 4) === "Exif") {
        const tiff = offset + 10;
        const little = view.getUint16(tiff) === 0x4949;
        const ifd0 = readIfd(view, tiff, tiff + view.getUint32(tiff + 4, little), little);
        const result = {};
        if (ifd0[0x8769]) {
          const exif = readIfd(view, tiff, tiff + ifd0[0x8769], little);
          const stamp = exif[0x9003] || ifd0[0x0132];
          const m = stamp && /^(\d{4}):(\d{2}):(\d{2}) (\d{2}):(\d{2}):(\d{2})/.exec(stamp);
          if (m) result.observedAt = `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}`;
        }
        if (ifd0[0x8825]) {
          const gps = readIfd(view, tiff, tiff + ifd0[0x8825], little);
          const dms = (v) => v && v.length === 3 ? v[0] + v[1] / 60 + v[2] / 3600 : null;
          let lat = dms(gps[2]);
          let lon = dms(gps[4]);
          if (lat !== null && lon !== null) {
            if (gps[1] === "S") lat = -lat;
            if (gps[3] === "W") lon = -lon;
            result.latitude = Number(lat.toFixed(6));
            result.longitude = Number(lon.toFixed(6));
          }
        }
        return result;
      }
      if ((marker & 0xff00) !== 0xff00) break;
      offset += 2 + length;
    }
  } catch (err) {
    console.warn("EXIF unreadable", err);
  }
  return {};
}

/** Resize a photo whose longer side is above MAX_SIDE (or that is very heavy). Returns a Blob or the file. */
export async function shrinkPhoto(file) {
  if (!file.type.startsWith("image/") || file.type === "image/heic" || file.type === "image/heif") return file;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    return file; // the server decodes what the browser cannot
  }
  const longer = Math.max(bitmap.width, bitmap.height);
  if (longer <= MAX_SIDE && file.size <= RESIZE_ABOVE_BYTES) { bitmap.close(); return file; }
  const scale = Math.min(1, MAX_SIDE / longer);
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
  if (!blob) return file;
  return new File([blob], file.name.replace(/\.\w+$/, "") + ".jpg", { type: "image/jpeg" });
}

/** Prepare photos for upload: {files: [File], exif: {observedAt, latitude, longitude}} (first EXIF found). */
export async function preparePhotos(files) {
  const out = [];
  let exif = {};
  for (const file of files) {
    if (!exif.observedAt || exif.latitude === undefined) {
      const found = parseExif(await file.slice(0, 256 * 1024).arrayBuffer());
      exif = { ...found, ...exif };
    }
    out.push(await shrinkPhoto(file));
  }
  return { files: out, exif };
}
