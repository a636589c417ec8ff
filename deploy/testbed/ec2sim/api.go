package ec2sim

import (
	"fmt"
	"hash/fnv"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
)

func errNotFound(ids []string) *awsquery.Error {
	msg := "The instance ID '" + ids[0] + "' does not exist"
	if len(ids) > 1 {
		msg = "The instance IDs '" + strings.Join(ids, ", ") + "' do not exist"
	}
	return &awsquery.Error{Status: http.StatusBadRequest, Code: "InvalidInstanceID.NotFound", Message: msg}
}

func errInvalidValue(format string, args ...any) *awsquery.Error {
	return &awsquery.Error{Status: http.StatusBadRequest, Code: "InvalidParameterValue", Message: fmt.Sprintf(format, args...)}
}

// errNotSimulated refuses what (a parameter, a kind of filter) and says so.
func errNotSimulated(what string) *awsquery.Error {
	return awsquery.Validation("ec2sim: %s of DescribeInstances is not simulated", what)
}

// params matches the parameters DescribeInstances simulates; any other is
// refused rather than silently ignored.
var params = regexp.MustCompile(`^(Action|Version|MaxResults|NextToken|InstanceId\.\d+|Filter\.\d+\.(Name|Value\.\d+))$`)

// filterFields are the filters simulated, by name: the field of an instance
// each matches.
var filterFields = map[string]func(*instance) string{
	"availability-zone":   func(in *instance) string { return in.zone },
	"instance-id":         func(in *instance) string { return in.id },
	"instance-state-name": func(in *instance) string { return in.state },
}

// filter is one Filter.N: an instance matches if its field matches one of
// the values.
type filter struct {
	field  func(*instance) string
	values []*regexp.Regexp
}

func (flt filter) match(in *instance) bool {
	v := flt.field(in)
	return slices.ContainsFunc(flt.values, func(re *regexp.Regexp) bool { return re.MatchString(v) })
}

// filters reads Filter.1, Filter.2, … up to the first index missing.
func filters(f url.Values) ([]filter, *awsquery.Error) {
	var out []filter
	for i := 1; ; i++ {
		p := "Filter." + strconv.Itoa(i) + "."
		values := awsquery.ListEC2(f, p+"Value")
		if !f.Has(p+"Name") && values == nil {
			return out, nil
		}
		name := f.Get(p + "Name")
		field := filterFields[name]
		if field == nil {
			return nil, awsquery.Validation("ec2sim: filter %q of DescribeInstances is not simulated; only %s are", name, strings.Join(slices.Sorted(maps.Keys(filterFields)), ", "))
		}
		if values == nil {
			return nil, errNotSimulated(fmt.Sprintf("filter %s without a value", name))
		}
		flt := filter{field: field}
		for _, v := range values {
			flt.values = append(flt.values, wildcard(v))
		}
		out = append(out, flt)
	}
}

// wildcard compiles a filter value, in which * matches any characters, ?
// exactly one, and a backslash makes the next character literal, as EC2's
// filters do.
func wildcard(value string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString(`^(?s:`)
	for i := 0; i < len(value); i++ {
		switch c := value[i]; {
		case c == '\\' && i+1 < len(value):
			i++
			b.WriteString(regexp.QuoteMeta(value[i : i+1]))
		case c == '*':
			b.WriteString(`.*`)
		case c == '?':
			b.WriteString(`.`)
		default:
			b.WriteString(regexp.QuoteMeta(value[i : i+1]))
		}
	}
	b.WriteString(`)$`)
	return regexp.MustCompile(b.String())
}

// instanceIDs reads InstanceId.N and returns the instances named, in
// configuration order (a new slice of every instance when none is named): an
// id of the wrong form is InvalidInstanceID.Malformed, ids no instance has
// are InvalidInstanceID.NotFound, all of them named.
func (s *Server) instanceIDs(f url.Values) ([]*instance, *awsquery.Error) {
	ids := awsquery.ListEC2(f, "InstanceId")
	var missing []string
	for _, id := range ids {
		if !validID(id) {
			return nil, &awsquery.Error{Status: http.StatusBadRequest, Code: "InvalidInstanceID.Malformed", Message: `Invalid id: "` + id + `"`}
		}
		if s.byID[id] == nil && !slices.Contains(missing, id) {
			missing = append(missing, id)
		}
	}
	if missing != nil {
		return nil, errNotFound(missing)
	}
	return slices.DeleteFunc(slices.Clone(s.instances), func(in *instance) bool {
		return ids != nil && !slices.Contains(ids, in.id)
	}), nil
}

// maxResults reads MaxResults: 0 if absent, else 5 to 1000, and not with
// InstanceId.
func maxResults(f url.Values) (int, *awsquery.Error) {
	if !f.Has("MaxResults") {
		return 0, nil
	}
	v := f.Get("MaxResults")
	n, err := strconv.Atoi(v)
	switch {
	case err != nil:
		return 0, errInvalidValue("Value ( %s ) for parameter maxResults is invalid. Expecting an integer.", v)
	case n < 5:
		return 0, errInvalidValue("Value ( %d ) for parameter maxResults is invalid. Expecting a value greater than 5.", n)
	case n > 1000:
		return 0, errInvalidValue("Value ( %d ) for parameter maxResults is invalid. Expecting a value less than 1000.", n)
	case f.Has("InstanceId.1"):
		return 0, &awsquery.Error{Status: http.StatusBadRequest, Code: "InvalidParameterCombination", Message: "The parameter instancesSet cannot be used with the parameter maxResults"}
	}
	return n, nil
}

// reservationID derives the id of id's reservation, in EC2's form.
func reservationID(id string) string {
	h := fnv.New64a()
	h.Write([]byte(id))
	return fmt.Sprintf("r-0%016x", h.Sum64())
}

// xmlItems is a list in EC2's protocol: <item> elements.
type xmlItems[T any] struct {
	Item []T `xml:"item"`
}

type xmlInstanceState struct {
	Code int32  `xml:"code"`
	Name string `xml:"name"`
}

type xmlPlacement struct {
	AvailabilityZone string `xml:"availabilityZone"`
	GroupName        string `xml:"groupName"`
	Tenancy          string `xml:"tenancy"`
}

type xmlInstance struct {
	InstanceID    string           `xml:"instanceId"`
	InstanceState xmlInstanceState `xml:"instanceState"`
	InstanceType  string           `xml:"instanceType"`
	LaunchTime    string           `xml:"launchTime"`
	Placement     xmlPlacement     `xml:"placement"`
}

type xmlReservation struct {
	ReservationID string                `xml:"reservationId"`
	OwnerID       string                `xml:"ownerId"`
	GroupSet      xmlItems[struct{}]    `xml:"groupSet"`
	InstancesSet  xmlItems[xmlInstance] `xml:"instancesSet"`
}

type describeInstancesResult struct {
	ReservationSet xmlItems[xmlReservation] `xml:"reservationSet"`
	NextToken      string                   `xml:"nextToken,omitempty"`
}

// describeInstances reports the instances InstanceId names (every instance
// when none is named) that match every filter, in configuration order, one
// reservation each, paged by MaxResults. A NextToken is the id of the first
// instance of the next page.
func (s *Server) describeInstances(f url.Values) (any, *awsquery.Error) {
	for k := range f {
		if !params.MatchString(k) {
			return nil, errNotSimulated("parameter " + k)
		}
	}
	size, aerr := maxResults(f)
	if aerr != nil {
		return nil, aerr
	}
	sel, aerr := s.instanceIDs(f)
	if aerr != nil {
		return nil, aerr
	}
	flts, aerr := filters(f)
	if aerr != nil {
		return nil, aerr
	}
	sel = slices.DeleteFunc(sel, func(in *instance) bool {
		return slices.ContainsFunc(flts, func(flt filter) bool { return !flt.match(in) })
	})
	from := 0
	if tok := f.Get("NextToken"); tok != "" {
		from = slices.IndexFunc(sel, func(in *instance) bool { return in.id == tok })
		if from < 0 {
			return nil, errInvalidValue("Value ( %s ) for parameter NextToken is invalid. The token is invalid.", tok)
		}
	}
	var res describeInstancesResult
	page := sel[from:]
	if size > 0 && len(page) > size {
		page, res.NextToken = page[:size], page[size].id
	}
	for _, in := range page {
		r := xmlReservation{ReservationID: reservationID(in.id), OwnerID: OwnerID}
		r.InstancesSet.Item = []xmlInstance{{
			InstanceID:    in.id,
			InstanceState: xmlInstanceState{Code: stateCodes[in.state], Name: in.state},
			InstanceType:  in.itype,
			LaunchTime:    s.launched.Format("2006-01-02T15:04:05.000Z"),
			Placement:     xmlPlacement{AvailabilityZone: in.zone, Tenancy: "default"},
		}}
		res.ReservationSet.Item = append(res.ReservationSet.Item, r)
	}
	return res, nil
}
