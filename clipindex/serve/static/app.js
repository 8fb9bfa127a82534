// The clipindex serve page: plain JavaScript, no dependencies, served by the package.
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var state = { token: sessionStorage.getItem('clipindex-token') || '', info: null,
                urls: [] };

  function authHeaders() {
    return state.token ? { Authorization: 'Bearer ' + state.token } : {};
  }

  function say(text, isError) {
    var s = $('status');
    s.textContent = text;
    s.className = isError ? 'error' : '';
  }

  function api(url, options) {
    options = options || {};
    options.headers = Object.assign({}, options.headers || {}, authHeaders());
    return fetch(url, options).then(function (r) {
      if (r.status === 401) {
        $('token-form').hidden = false;
        $('token').focus();
        throw new Error('This server needs a token: enter it above.');
      }
      return r.json().catch(function () { return null; }).then(function (body) {
        if (!r.ok) { throw new Error((body && body.error) || ('HTTP ' + r.status)); }
        var notes = [];
        try { notes = JSON.parse(r.headers.get('X-Clipindex-Notes') || '[]'); } catch (e) {}
        return { body: body, notes: notes };
      });
    });
  }

  function option(select, value) {
    var o = document.createElement('option');
    o.value = value; o.textContent = value;
    select.appendChild(o);
  }

  function showInfo(info) {
    state.info = info;
    $('dataset').textContent = (info.dataset || 'store') + ': ' + info.n_images +
      ' images, ' + info.n_captions + ' captions';
    var box = $('backbones');
    box.querySelectorAll('label').forEach(function (l) { l.remove(); });
    info.backbones.forEach(function (b) {
      var label = document.createElement('label');
      var input = document.createElement('input');
      input.type = 'checkbox'; input.name = 'backbone'; input.value = b.name;
      input.checked = true;
      label.appendChild(input);
      label.appendChild(document.createTextNode(b.name));
      box.appendChild(label);
    });
    [['label', info.labels], ['split', info.splits]].forEach(function (pair) {
      var select = $(pair[0]);
      while (select.options.length > 1) { select.remove(1); }
      pair[1].forEach(function (v) { option(select, v); });
    });
  }

  function params() {
    var p = new URLSearchParams();
    p.set('k', $('k').value);
    document.querySelectorAll('#backbones input:checked').forEach(function (c) {
      p.append('backbone', c.value);
    });
    if ($('label').value) { p.append('where', 'label=' + $('label').value); }
    if ($('split').value) { p.append('where', 'split=' + $('split').value); }
    return p;
  }

  function setImage(img, rowId) {
    var url = '/thumbs/' + rowId;
    if (!state.token) { img.src = url; return; }
    fetch(url, { headers: authHeaders() }).then(function (r) {
      if (!r.ok) { throw new Error('HTTP ' + r.status); }
      return r.blob();
    }).then(function (blob) {
      var obj = URL.createObjectURL(blob);
      state.urls.push(obj);
      img.src = obj;
    }).catch(function () { img.alt += ' (not available)'; });
  }

  function card(hit) {
    var li = document.createElement('li');
    var b = document.createElement('button');
    b.type = 'button'; b.className = 'hit'; b.dataset.row = hit.row_id;
    var img = document.createElement('img');
    img.alt = (hit.label || 'image') + ', ' + hit.file;
    img.width = 160; img.height = 160;
    setImage(img, hit.row_id);
    var meta = document.createElement('span'); meta.className = 'meta';
    var label = document.createElement('span'); label.className = 'label';
    label.textContent = hit.label || '';
    var score = document.createElement('span'); score.className = 'score';
    score.textContent = '#' + hit.rank + ' ' + Number(hit.score).toFixed(4);
    meta.appendChild(label); meta.appendChild(score);
    var cap = document.createElement('span'); cap.className = 'caption';
    cap.textContent = hit.caption || '';
    b.appendChild(img); b.appendChild(meta); b.appendChild(cap);
    b.setAttribute('aria-label', 'Search by this image: ' + (hit.label || '') + ', ' +
                   hit.file + ', score ' + Number(hit.score).toFixed(4));
    b.addEventListener('click', function () {
      run('/search?' + withParam('like', hit.row_id), null, 'images like ' + hit.file, true);
    });
    li.appendChild(b);
    return li;
  }

  function withParam(name, value) {
    var p = params(); p.set(name, value); return p.toString();
  }

  function render(hits, what, notes) {
    state.urls.forEach(function (u) { URL.revokeObjectURL(u); });
    state.urls = [];
    var grid = $('results');
    grid.textContent = '';
    hits.forEach(function (h) { grid.appendChild(card(h)); });
    grid.dataset.query = what;
    var fused = hits.length && hits[0].score_kind === 'rrf' ? ' (fused ranks)' : '';
    say(hits.length + ' results for ' + what + fused +
        (notes.length ? ' — ' + notes.join(' ') : ''));
  }

  function run(url, body, what, focusStatus) {
    say('Searching ' + what + '…');
    var options = body ? { method: 'POST', body: body } : {};
    return api(url, options).then(function (res) {
      render(res.body, what, res.notes);
      if (focusStatus) { $('status').focus(); }
    }).catch(function (err) { say(err.message, true); });
  }

  function byFile(file) {
    if (!file) { return; }
    var form = new FormData();
    form.append('image', file, file.name);
    run('/search?' + params().toString(), form, 'the image ' + file.name, true);
  }

  function loadInfo() {
    return api('/info').then(function (res) { showInfo(res.body); say(''); })
      .catch(function (err) { say(err.message, true); });
  }

  document.addEventListener('DOMContentLoaded', function () {
    $('search-form').addEventListener('submit', function (e) {
      e.preventDefault();
      var q = $('q').value.trim();
      if (!q) { say('Type some words to search for.', true); return; }
      run('/search?' + withParam('q', q), null, '“' + q + '”', false);
    });
    $('pick').addEventListener('click', function () { $('file').click(); });
    $('file').addEventListener('change', function () { byFile($('file').files[0]); });
    $('token-form').addEventListener('submit', function (e) {
      e.preventDefault();
      state.token = $('token').value;
      sessionStorage.setItem('clipindex-token', state.token);
      $('token-form').hidden = true;
      loadInfo();
    });
    var zone = $('drop-zone'), depth = 0;
    document.addEventListener('dragenter', function (e) {
      e.preventDefault(); depth += 1; zone.hidden = false;
    });
    document.addEventListener('dragleave', function () {
      depth = Math.max(0, depth - 1); if (!depth) { zone.hidden = true; }
    });
    document.addEventListener('dragover', function (e) { e.preventDefault(); });
    document.addEventListener('drop', function (e) {
      e.preventDefault(); depth = 0; zone.hidden = true;
      byFile(e.dataTransfer && e.dataTransfer.files[0]);
    });
    loadInfo();
  });
}());
