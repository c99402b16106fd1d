// xterm.js adds <style> elements for its layout and colours. The terminal pages' CSP admits
// <style> elements only with the page's nonce, so every <style> this page creates gets it.
"use strict";
(() => {
  const meta = document.querySelector('meta[name="csp-nonce"]');
  if (!meta) return;
  const nonce = meta.content;
  const create = document.createElement.bind(document);
  document.createElement = function (tag, options) {
    const node = create(tag, options);
    if (String(tag).toLowerCase() === "style") node.nonce = nonce;
    return node;
  };
})();
