// The steps the datasets and weights pages share: send a file with a progress bar (XMLHttpRequest:
// fetch reports no upload progress), then say what came back; and delete after a confirmation.
// Every string a user chose is set as text only.

import { api, upload } from "../api.js";
import { h, fill, bytes, errorBox } from "../dom.js";

// Upload `file` to `url`; `parts` = { bar, barText, button, status, form }; `done(record)` returns
// the success banner's text; `reload()` refreshes the page's list.
export async function sendWithProgress(url, file, contentType, parts, done, reload) {
  const { bar, barText, button, status, form } = parts;
  bar.hidden = false;
  bar.value = 0;
  button.disabled = true;
  status.replaceChildren();
  try {
    const record = await upload(url, file, contentType, (loaded, total) => {
      bar.value = loaded / total;
      barText.textContent = `${bytes(loaded)} of ${bytes(total)}`;
    });
    bar.value = 1;
    barText.textContent = "uploaded and checked";
    fill(status, h("p.banner.ok", { text: done(record) }));
    form.reset();
    await reload();
  } catch (err) {
    barText.textContent = "";
    fill(status, errorBox(`Upload refused: ${err.message}`));
  } finally {
    button.disabled = false;
  }
}

// Delete `url` after the user confirms; `what` names it ("the dataset “x” (ds_...)"), `shortName` is
// the banners' name for it. A refusal (409 while a job needs it) shows the API's own message.
export async function removeAfterConfirm(url, what, shortName, status, reload) {
  if (!window.confirm(`Delete ${what}?`)) return;
  try {
    await api(url, { method: "DELETE" });
    fill(status, h("p.banner.ok", { text: `Deleted “${shortName}”.` }));
  } catch (err) {
    fill(status, errorBox(`Could not delete “${shortName}”: ${err.message}`));
  }
  await reload();
}
