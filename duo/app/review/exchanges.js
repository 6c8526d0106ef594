// The Exchanges panel: filter, accept or reject, edit the response, set the task (duo/review/exchanges.py).
duo.register("exchanges", {
  filters: {task: "", q: "", status: ""},

  async render(main) {
    const f = this.filters;
    const data = await duo.api("exchanges", "list", {...f, limit: 200});
    const taskList = duo.el("datalist", {id: "tasks"}, data.tasks.map(t => duo.el("option", {value: t})));
    const search = duo.el("input", {type: "search", id: "filter-q", placeholder: "text in the conversation or response",
                                    value: f.q, size: 36});
    search.addEventListener("change", () => { f.q = search.value; this.render(main); });
    const task = duo.el("select", {id: "filter-task", onchange: e => { f.task = e.target.value; this.render(main); }},
      duo.el("option", {value: ""}, "all tasks"), data.tasks.map(t => duo.el("option", {value: t}, t)));
    task.value = f.task;
    const status = duo.el("select", {id: "filter-status", onchange: e => { f.status = e.target.value; this.render(main); }},
      ["", "pending", "accepted", "rejected"].map(s => duo.el("option", {value: s}, s || "any status")));
    status.value = f.status;
    const c = data.counts;
    const bar = duo.el("div", {class: "bar"}, search, task, status, taskList,
      duo.el("span", {class: "counts", id: "counts"},
             `${c.accepted} accepted · ${c.rejected} rejected · ${c.pending} pending → ${data.coverage}`));
    const list = duo.el("div", {id: "items"});
    if (!data.items.length) list.append(duo.el("div", {class: "empty"}, "No exchange matches."));
    for (const item of data.items) list.append(this.card(item, main));
    main.replaceChildren(bar, list);
  },

  card(item, main) {
    const turns = item.messages.map(m => duo.el("div", {class: `turn ${m.role === "developer" ? "system" : m.role}`},
                                                duo.el("span", {class: "role"}, m.role), m.content));
    const response = duo.el("textarea", {class: "response", "aria-label": "response"});
    response.value = item.response;
    const task = duo.el("input", {class: "task", list: "tasks", placeholder: "task", value: item.task, size: 18});
    const error = duo.el("span", {class: "err"});
    const decide = async (body) => {
      error.textContent = "";
      try {
        await duo.api("exchanges", "decide", {key: item.key, task: task.value, response: response.value, ...body});
        await this.render(main);
      } catch (e) { error.textContent = e.message; }
    };
    return duo.el("div", {class: `card ${item.status}`, "data-key": item.key, "data-status": item.status},
      duo.el("div", {class: "meta"},
        duo.el("span", {class: `badge ${item.status}`}, item.status),
        item.at ? duo.el("span", {}, item.at) : "", item.model ? duo.el("span", {}, item.model) : "",
        duo.el("span", {}, item.id), item.edited ? duo.el("span", {class: "edited"}, "response edited") : ""),
      turns,
      duo.el("div", {class: "turn assistant"}, duo.el("span", {class: "role"}, "response"), response),
      duo.el("div", {class: "row"}, task,
        duo.el("button", {class: "accept", onclick: () => decide({status: "accepted"})}, "Accept"),
        duo.el("button", {class: "reject", onclick: () => decide({status: "rejected"})}, "Reject"),
        duo.el("button", {class: "save", onclick: () => decide({})}, "Save edit"),
        item.status !== "pending" ? duo.el("button", {class: "undo", onclick: () => decide({status: "pending"})}, "Undo") : "",
        error));
  },
});
