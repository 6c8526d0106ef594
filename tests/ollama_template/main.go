// Renders prompts the way Ollama does, with Go's own text/template, for tests/test_ollama_templates.py.
//
// What Ollama passes to a Modelfile's TEMPLATE (ollama/ollama, read for this helper):
//   - server/routes.go ChatHandler: the request's messages; the Modelfile's SYSTEM is prepended as a
//     system message only when the first message is not a system one.
//   - server/routes.go GenerateHandler: a system message (the request's `system`, else SYSTEM), then
//     the prompt as a user message.
//   - template/template.go: parsed with missingkey=zero and one extra function, `json`; a template that
//     names .Messages is executed once with .System (every system message's content, joined by "\n\n")
//     and .Messages (consecutive messages of one role merged with "\n\n", tool results excepted),
//     .Tools, .Response "" and .Think false.
//
// stdin: {"template": "...", "system": "<Modelfile SYSTEM>", "requests": [{"messages": [...]} |
// {"generate": true, "system": "...", "prompt": "..."}]}; stdout: the rendered prompts, a JSON list.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
)

// Message has the fields of Ollama's api.Message that templates read.
type Message struct {
	Role      string `json:"role"`
	Content   string `json:"content"`
	Thinking  string `json:"thinking"`
	Images    []any  `json:"images"`
	ToolCalls []any  `json:"tool_calls"`
	ToolName  string `json:"tool_name"`
}

type Request struct {
	Messages []Message `json:"messages"`
	Generate bool      `json:"generate"`
	System   string    `json:"system"`
	Prompt   string    `json:"prompt"`
}

type Input struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Requests []Request `json:"requests"`
}

var funcs = template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}

// names lists the fields and variables a template mentions, lower-cased (Ollama's Vars).
func names(n parse.Node, out map[string]bool) {
	switch n := n.(type) {
	case *parse.ListNode:
		if n != nil {
			for _, c := range n.Nodes {
				names(c, out)
			}
		}
	case *parse.ActionNode:
		names(n.Pipe, out)
	case *parse.TemplateNode:
		names(n.Pipe, out)
	case *parse.IfNode:
		names(&n.BranchNode, out)
	case *parse.RangeNode:
		names(&n.BranchNode, out)
	case *parse.WithNode:
		names(&n.BranchNode, out)
	case *parse.BranchNode:
		names(n.Pipe, out)
		names(n.List, out)
		if n.ElseList != nil {
			names(n.ElseList, out)
		}
	case *parse.PipeNode:
		if n == nil {
			return
		}
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				names(a, out)
			}
		}
	case *parse.FieldNode:
		for _, id := range n.Ident {
			out[strings.ToLower(id)] = true
		}
	case *parse.VariableNode:
		for _, id := range n.Ident {
			out[strings.ToLower(id)] = true
		}
	}
}

// collate: every system message's content joined, and consecutive messages of one role merged.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var out []*Message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == m.Role && m.Role != "tool" {
			out[len(out)-1].Content += "\n\n" + m.Content
		} else {
			out = append(out, &m)
		}
	}
	return strings.Join(system, "\n\n"), out
}

func render(tmpl *template.Template, msgs []Message) (string, error) {
	system, collated := collate(msgs)
	var b bytes.Buffer
	err := tmpl.Execute(&b, map[string]any{"System": system, "Messages": collated, "Tools": nil,
		"Response": "", "Think": false, "IsThinkSet": false})
	return b.String(), err
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(in.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template:", err)
		os.Exit(1)
	}
	vars := map[string]bool{}
	names(tmpl.Tree.Root, vars)
	if !vars["messages"] {
		fmt.Fprintln(os.Stderr, "template: does not range over .Messages (Ollama would use its legacy prompt path)")
		os.Exit(1)
	}
	out := []string{}
	for _, r := range in.Requests {
		var msgs []Message
		if r.Generate {
			if r.System != "" {
				msgs = append(msgs, Message{Role: "system", Content: r.System})
			} else if in.System != "" {
				msgs = append(msgs, Message{Role: "system", Content: in.System})
			}
			msgs = append(msgs, Message{Role: "user", Content: r.Prompt})
		} else {
			msgs = r.Messages
			if len(msgs) > 0 && msgs[0].Role != "system" && in.System != "" {
				msgs = append([]Message{{Role: "system", Content: in.System}}, msgs...)
			}
		}
		text, err := render(tmpl, msgs)
		if err != nil {
			fmt.Fprintln(os.Stderr, "execute:", err)
			os.Exit(1)
		}
		out = append(out, text)
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
